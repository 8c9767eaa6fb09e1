//! End to end: the real `cryptflow-kms` and `cryptflow-aggregator` binaries as separate
//! processes, configured from files as an operator would, and `cryptflow` CLI processes as
//! the operator and three clients exchanging `.npy` files — then a round of safetensors
//! files with sample weights, and the CLI's error exits.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::Duration;

const CLI: &str = env!("CARGO_BIN_EXE_cryptflow");

/// The servers' binaries, built by `cargo test --workspace` next to ours; built on demand
/// when this package's tests run alone.
fn server_binary(name: &str) -> PathBuf {
    let dir = Path::new(CLI).parent().unwrap();
    let path = dir.join(name);
    if !path.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-p", "cryptflow-kms", "-p", "cryptflow-aggregator", "--bins"]);
        if dir.ends_with("release") {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building the server binaries failed");
    }
    path
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A server process, killed when dropped (even on panic).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

async fn wait_ready(base: &str) {
    for _ in 0..300 {
        if reqwest::get(format!("{base}/readyz")).await.is_ok_and(|r| r.status().is_success()) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{base} did not become ready");
}

struct Deployment {
    dir: tempfile::TempDir,
    kms: String,
    aggregator: String,
    _servers: Vec<Server>,
}

impl Deployment {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// Mints a token file with the CLI.
    fn mint(&self, sub: &str, role: &str, aud: &str) -> PathBuf {
        let out = self.path(&format!("{sub}.{aud}.jwt"));
        if !out.exists() {
            run_ok(
                Command::new(CLI)
                    .args([
                        "token", "mint", "--kid", "issuer-1", "--sub", sub, "--role", role,
                        "--aud", aud, "--ttl", "600", "--key",
                    ])
                    .arg(self.path("issuer.pem"))
                    .arg("--out")
                    .arg(&out),
            );
        }
        out
    }

    /// A `cryptflow` command acting as `sub` (`admin` is the operator).
    fn cli(&self, sub: &str) -> Command {
        let role = if sub == "ops" { "admin" } else { "client" };
        let mut c = Command::new(CLI);
        c.env("CRYPTFLOW_AGGREGATOR_URL", &self.aggregator)
            .env("CRYPTFLOW_KMS_URL", &self.kms)
            .env("CRYPTFLOW_AGGREGATOR_TOKEN_FILE", self.mint(sub, role, "aggregator"))
            .env("CRYPTFLOW_KMS_TOKEN_FILE", self.mint(sub, role, "kms"));
        c
    }
}

/// Sets up keys and configuration files with the CLIs, migrates, and starts both servers.
async fn deploy() -> Deployment {
    let dir = tempfile::tempdir().unwrap();
    let p = |n: &str| dir.path().join(n);
    let kms_bin = server_binary("cryptflow-kms");
    let agg_bin = server_binary("cryptflow-aggregator");
    run_ok(
        Command::new(CLI)
            .args(["token", "keygen", "--private"])
            .arg(p("issuer.pem"))
            .arg("--public")
            .arg(p("issuer.pub.pem")),
    );
    run_ok(Command::new(&kms_bin).arg("generate-master-key").arg(p("master.key")));
    run_ok(
        Command::new(CLI)
            .args([
                "token",
                "mint",
                "--kid",
                "issuer-1",
                "--sub",
                "aggregator",
                "--role",
                "aggregator",
                "--aud",
                "kms",
                "--ttl",
                "600",
                "--key",
            ])
            .arg(p("issuer.pem"))
            .arg("--out")
            .arg(p("aggregator-kms.jwt")),
    );

    let (kms_port, agg_port) = (free_port(), free_port());
    let jwt = format!(
        "[[jwt_keys]]\nkid = \"issuer-1\"\npublic_key_file = \"{}\"\n",
        p("issuer.pub.pem").display()
    );
    std::fs::write(
        p("kms.toml"),
        format!(
            "listen = \"127.0.0.1:{kms_port}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
             database_url = \"sqlite://{}?mode=rwc\"\nmaster_key_file = \"{}\"\n{jwt}",
            free_port(),
            p("kms.db").display(),
            p("master.key").display()
        ),
    )
    .unwrap();
    std::fs::write(
        p("aggregator.toml"),
        format!(
            "listen = \"127.0.0.1:{agg_port}\"\nmetrics_listen = \"127.0.0.1:{}\"\n\
             database_url = \"sqlite://{}?mode=rwc\"\nblob_dir = \"{}\"\n\
             kms_url = \"http://127.0.0.1:{kms_port}\"\nkms_token_file = \"{}\"\ntick_secs = 1\n{jwt}",
            free_port(),
            p("aggregator.db").display(),
            p("blobs").display(),
            p("aggregator-kms.jwt").display()
        ),
    )
    .unwrap();
    let start = |bin: &Path, config: &str| {
        run_ok(Command::new(bin).args(["migrate", "--config"]).arg(p(config)));
        Server(
            Command::new(bin)
                .args(["serve", "--config"])
                .arg(p(config))
                .env("RUST_LOG", "warn")
                .stdout(Stdio::null())
                .spawn()
                .unwrap(),
        )
    };
    let servers = vec![start(&kms_bin, "kms.toml"), start(&agg_bin, "aggregator.toml")];
    let kms = format!("http://127.0.0.1:{kms_port}");
    let aggregator = format!("http://127.0.0.1:{agg_port}");
    wait_ready(&kms).await;
    wait_ready(&aggregator).await;
    Deployment { dir, kms, aggregator, _servers: servers }
}

fn json(out: &Output) -> serde_json::Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

fn update(k: usize, n: usize) -> Vec<f64> {
    (0..n).map(|j| (((k * 7919 + j * 104_729) % 2001) as f64 / 1000.0) - 1.0).collect()
}

/// Runs submissions as concurrent processes and checks each succeeded.
fn submit_all(cmds: Vec<Command>) {
    let children: Vec<(String, Child)> = cmds
        .into_iter()
        .map(|mut c| {
            let name = format!("{c:?}");
            (name, c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap())
        })
        .collect();
    for (name, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "{name}: {}", String::from_utf8_lossy(&out.stderr));
        let receipt = json(&out);
        assert_eq!(receipt["receipt"]["sha256"].as_str().unwrap().len(), 64);
    }
}

#[tokio::test]
async fn three_cli_clients_average_npy_files_then_safetensors() {
    let dep = deploy().await;
    let sites = ["site-0", "site-1", "site-2"];

    // --- Round 1: .npy files (a 2-D float32 array each), uniform weighting.
    let shape = [30usize, 40];
    let n = shape[0] * shape[1];
    for (k, site) in sites.iter().enumerate() {
        let a = ArrayD::from_shape_vec(IxDyn(&shape), update(k, n)).unwrap().mapv(|v| v as f32);
        a.write_npy(std::fs::File::create(dep.path(&format!("{site}.npy"))).unwrap()).unwrap();
    }
    let created = run_ok(
        dep.cli("ops")
            .args([
                "--json",
                "round",
                "create",
                "--round",
                "npy-1",
                "--clients",
                "site-0,site-1,site-2",
                "--like",
            ])
            .arg(dep.path("site-0.npy")),
    );
    let info = json(&created);
    assert_eq!(info["state"], "open");
    assert_eq!(info["encrypted_values"], n as u64);

    // Fetching before publication is a round-state error (exit 6), not a crash.
    let early = dep
        .cli("site-1")
        .args(["fetch", "--round", "npy-1", "--out"])
        .arg(dep.path("early.npy"))
        .output()
        .unwrap();
    assert_eq!(early.status.code(), Some(6), "{}", String::from_utf8_lossy(&early.stderr));
    // A file of the wrong shape is refused locally (exit 3), naming the difference.
    ndarray::Array2::<f32>::zeros((3, 3))
        .write_npy(std::fs::File::create(dep.path("bad.npy")).unwrap())
        .unwrap();
    let bad = dep
        .cli("site-0")
        .args(["submit", "--round", "npy-1", "--client", "site-0", "--update"])
        .arg(dep.path("bad.npy"))
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("[3, 3]"));
    // A client outside the round is refused by the server (exit 4).
    let outsider = dep
        .cli("mallory")
        .args(["--json", "submit", "--round", "npy-1", "--client", "mallory", "--update"])
        .arg(dep.path("site-0.npy"))
        .output()
        .unwrap();
    assert_eq!(outsider.status.code(), Some(4));
    let err: serde_json::Value = serde_json::from_slice(&outsider.stderr).unwrap();
    assert_eq!(err["problem"]["status"], 403);

    submit_all(
        sites
            .iter()
            .map(|s| {
                let mut c = dep.cli(s);
                c.args(["--json", "submit", "--round", "npy-1", "--client", s, "--update"])
                    .arg(dep.path(&format!("{s}.npy")));
                c
            })
            .collect(),
    );
    let status =
        json(&run_ok(dep.cli("ops").args(["--json", "round", "status", "--round", "npy-1"])));
    assert_eq!(status["contributors"], 3);

    for site in sites {
        let out = dep.path(&format!("mean-{site}.npy"));
        let fetched = json(&run_ok(
            dep.cli(site)
                .args(["--json", "fetch", "--round", "npy-1", "--wait", "60", "--out"])
                .arg(&out)
                .arg("--like")
                .arg(dep.path(&format!("{site}.npy"))),
        ));
        let bound = fetched["max_abs_error"].as_f64().unwrap();
        assert_eq!(fetched["contributors"], 3);
        // The mean comes back as float32 with the submitted shape.
        let mean = ArrayD::<f32>::read_npy(std::fs::File::open(&out).unwrap()).unwrap();
        assert_eq!(mean.shape(), &shape);
        let mut worst = 0f64;
        for (j, m) in mean.iter().enumerate() {
            let exact: f64 = (0..3).map(|k| f64::from(update(k, n)[j] as f32)).sum::<f64>() / 3.0;
            worst = worst.max((f64::from(*m) - exact).abs());
        }
        // float32 output adds its own rounding (≤ 2^-24 relative) to the planner's bound.
        assert!(worst <= bound + 6e-8, "{site}: error {worst:e} > bound {bound:e}");
    }

    // --- Round 2: safetensors with named tensors of two dtypes, weighted by sample count.
    let tensors = [("fc1.bias", vec![8usize], Dtype::F64), ("fc1.weight", vec![8, 4], Dtype::F32)];
    let weights = [3u64, 5, 10];
    let mut expected: Vec<Vec<f64>> =
        tensors.iter().map(|(_, s, _)| vec![0.0; s.iter().product()]).collect();
    for (k, site) in sites.iter().enumerate() {
        let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
            .iter()
            .enumerate()
            .map(|(t, (name, shape, dt))| {
                let n: usize = shape.iter().product();
                let v = update(k + 10 * t, n);
                for (e, x) in expected[t].iter_mut().zip(&v) {
                    *e += x * weights[k] as f64 / 18.0;
                }
                let bytes = match dt {
                    Dtype::F32 => v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect(),
                    _ => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
                };
                (name.to_string(), *dt, shape.clone(), bytes)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(n, dt, s, b)| (n.clone(), TensorView::new(*dt, s.clone(), b).unwrap()))
            .collect();
        std::fs::write(
            dep.path(&format!("{site}.safetensors")),
            safetensors::serialize(views, None).unwrap(),
        )
        .unwrap();
    }
    run_ok(
        dep.cli("ops")
            .args([
                "round",
                "create",
                "--round",
                "st-1",
                "--clients",
                "site-0,site-1,site-2",
                "--weighting",
                "samples",
                "--max-weight",
                "10",
                "--precision",
                "1e-4",
                "--like",
            ])
            .arg(dep.path("site-0.safetensors")),
    );
    submit_all(
        sites
            .iter()
            .zip(weights)
            .map(|(s, w)| {
                let mut c = dep.cli(s);
                c.args([
                    "--json",
                    "submit",
                    "--round",
                    "st-1",
                    "--client",
                    s,
                    "--weight",
                    &w.to_string(),
                    "--update",
                ])
                .arg(dep.path(&format!("{s}.safetensors")));
                c
            })
            .collect(),
    );
    let out = dep.path("mean.safetensors");
    let fetched = json(&run_ok(
        dep.cli("site-2")
            .args(["--json", "fetch", "--round", "st-1", "--wait", "60", "--out"])
            .arg(&out)
            .arg("--like")
            .arg(dep.path("site-2.safetensors")),
    ));
    assert_eq!(fetched["total_weight"].as_f64(), Some(18.0));
    let bound = fetched["max_abs_error"].as_f64().unwrap();
    let bytes = std::fs::read(&out).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    for (t, (name, shape, dt)) in tensors.iter().enumerate() {
        let view = st.tensor(name).unwrap();
        assert_eq!((view.dtype(), view.shape()), (*dt, shape.as_slice()), "{name}");
        let got: Vec<f64> = match dt {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|c| f64::from(f32::from_le_bytes(c.try_into().unwrap())))
                .collect(),
            _ => view
                .data()
                .chunks_exact(8)
                .map(|c| f64::from_le_bytes(c.try_into().unwrap()))
                .collect(),
        };
        // Inputs were float32-rounded for F32 tensors: allow that plus the planner's bound.
        let worst = got.iter().zip(&expected[t]).map(|(g, e)| (g - e).abs()).fold(0.0, f64::max);
        assert!(worst <= bound + 2e-7, "{name}: {worst:e} > {bound:e}");
    }

    // Unknown round: a refusal (exit 4), human-readable by default.
    let missing = dep.cli("ops").args(["round", "status", "--round", "nope"]).output().unwrap();
    assert_eq!(missing.status.code(), Some(4));
    assert!(String::from_utf8_lossy(&missing.stderr).starts_with("error: aggregator refused"));
}

/// The main job, as a script would run it: every round's JSON line shows the encrypted
/// model's accuracy equal to plaintext FedAvg's and the mean within the planner's bound.
#[test]
fn demo_runs_and_matches_plaintext_fedavg() {
    for weighting in ["uniform", "private"] {
        let out = run_ok(Command::new(CLI).args([
            "--json",
            "demo",
            "--rounds",
            "3",
            "--clients",
            "4",
            "--hidden",
            "16",
            "--weighting",
            weighting,
        ]));
        let rounds: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rounds.len(), 3);
        for r in &rounds {
            assert_eq!(r["accuracy_encrypted"], r["accuracy_plaintext"], "{r}");
            assert!(r["max_abs_error"].as_f64().unwrap() <= r["bound"].as_f64().unwrap(), "{r}");
            assert_eq!(r["parameters"], 64 * 16 + 16 + 16 * 10 + 10);
        }
        assert!(rounds[2]["accuracy_encrypted"].as_f64().unwrap() > 0.5, "{:?}", rounds[2]);
    }
    // Bad flags are usage errors (exit 2), not crashes.
    let bad = Command::new(CLI).args(["demo", "--clip", "-1"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));
}
