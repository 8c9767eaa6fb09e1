//! One configuration loader for both services: defaults, then a TOML file, then
//! `CRYPTFLOW_…` environment variables (`__` separates nesting levels, e.g.
//! `CRYPTFLOW_KMS__DATABASE__URL`). Unknown keys are errors when the target struct says
//! `#[serde(deny_unknown_fields)]`, so a typo cannot silently fall back to a default.

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::path::Path;
use thiserror::Error;

/// A configuration that could not be loaded; names the key and the source.
#[derive(Debug, Error)]
#[error("configuration error: {0}")]
pub struct ConfigError(String);

/// Loads `T` from its defaults, the optional TOML `file`, then environment variables that
/// start with `prefix` (e.g. `CRYPTFLOW_KMS__`), nested by `__`.
///
/// ```
/// use serde::{Deserialize, Serialize};
/// #[derive(Serialize, Deserialize, Default, Debug, PartialEq)]
/// #[serde(deny_unknown_fields, default)]
/// struct Cfg { listen: String, workers: u32 }
/// // SAFETY of the example: single-threaded doctest.
/// let cfg: Cfg = cryptflow_services::config::load(None, "CRYPTFLOW_DOCTEST__").unwrap();
/// assert_eq!(cfg, Cfg::default());
/// ```
pub fn load<T>(file: Option<&Path>, prefix: &str) -> Result<T, ConfigError>
where
    T: Serialize + DeserializeOwned + Default,
{
    let mut figment = Figment::from(Serialized::defaults(T::default()));
    if let Some(path) = file {
        if !path.exists() {
            return Err(ConfigError(format!("file {} does not exist", path.display())));
        }
        figment = figment.merge(Toml::file(path));
    }
    figment = figment.merge(Env::prefixed(prefix).split("__"));
    figment.extract().map_err(|e| ConfigError(e.to_string()))
}

/// A configuration as JSON for display (`check-config`), with the password of every
/// `…_url` value replaced by `***`.
pub fn redacted_json<T: serde::Serialize>(config: &T) -> String {
    let mut v = serde_json::to_value(config).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for (k, val) in map.iter_mut() {
            if let (true, Some(url)) = (k.ends_with("_url"), val.as_str()) {
                *val = serde_json::Value::String(redact_url(url));
            }
        }
    }
    serde_json::to_string_pretty(&v).unwrap_or_default()
}

/// `scheme://user:secret@host/…` → `scheme://user:***@host/…`.
///
/// ```
/// use cryptflow_services::config::redact_url;
/// assert_eq!(redact_url("postgres://kms:s3cret@db:5432/kms"), "postgres://kms:***@db:5432/kms");
/// assert_eq!(redact_url("sqlite://kms.db?mode=rwc"), "sqlite://kms.db?mode=rwc");
/// ```
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else { return url.to_owned() };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked =
                if userinfo.contains(':') { format!("{user}:***") } else { user.to_owned() };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(deny_unknown_fields, default)]
    struct Cfg {
        listen: String,
        database: Db,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq, Default)]
    #[serde(deny_unknown_fields, default)]
    struct Db {
        url: String,
        max_connections: u32,
    }

    impl Default for Cfg {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:8080".into(),
                database: Db { url: "sqlite::memory:".into(), max_connections: 4 },
            }
        }
    }

    #[test]
    fn file_then_environment() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "listen = \"0.0.0.0:9\"\n[database]\nmax_connections = 9\n").unwrap();
        let cfg: Cfg = load(Some(&path), "CRYPTFLOW_CFGTEST_A__").unwrap();
        assert_eq!(cfg.listen, "0.0.0.0:9");
        assert_eq!(cfg.database.max_connections, 9);
        assert_eq!(cfg.database.url, "sqlite::memory:");
        // figment's Jail would isolate env vars; a unique prefix does the same here.
        std::env::set_var("CRYPTFLOW_CFGTEST_B__DATABASE__URL", "postgres://db/x");
        let cfg: Cfg = load(Some(&path), "CRYPTFLOW_CFGTEST_B__").unwrap();
        assert_eq!(cfg.database.url, "postgres://db/x");
    }

    #[test]
    fn unknown_keys_and_bad_types_are_errors_naming_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[database]\nmax_conections = 9\n").unwrap();
        let err = load::<Cfg>(Some(&path), "CRYPTFLOW_CFGTEST_C__").unwrap_err().to_string();
        assert!(err.contains("max_conections"), "{err}");
        std::env::set_var("CRYPTFLOW_CFGTEST_D__DATABASE__MAX_CONNECTIONS", "many");
        let err = load::<Cfg>(None, "CRYPTFLOW_CFGTEST_D__").unwrap_err().to_string();
        assert!(err.to_lowercase().contains("max_connections"), "{err}");
        let err = load::<Cfg>(Some(&dir.path().join("missing.toml")), "X__").unwrap_err();
        assert!(err.to_string().contains("does not exist"));
    }
}
