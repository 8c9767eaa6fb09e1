//! The ciphertext-overhead suite's report: one [`Row`] per (system, d, K, precision), and
//! its renderings as a Markdown table, JSON lines and an SVG plot of overhead against d.
//!
//! The measuring binary is `overhead` (`benches/src/main.rs`); the peer comparison writes
//! rows of the same shape (`benches/peers/`). Every figure in `BENCHMARKS.md` comes from
//! these. The `he` criterion micro-benchmarks live in `he/benches/he.rs`.

use serde::{Deserialize, Serialize};
use std::fmt::Write as _;

/// One measured configuration. Times are milliseconds; sizes are bytes per value of the
/// model update (float32 is 4). `None` where a figure was not measured (with the reason in
/// `note`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// `cryptflow` or a peer's name.
    pub system: String,
    /// Values per update.
    pub d: u64,
    /// Clients.
    pub k: u32,
    /// Target error of a coordinate of the mean (`None` for peers without one).
    pub precision: Option<f64>,
    /// Upload bytes per value.
    pub upload_bytes_per_value: f64,
    /// Download (aggregate) bytes per value.
    pub download_bytes_per_value: f64,
    /// Key material a client exchanges, bytes per value: a public key it downloads (v1, peers),
    /// or the Shamir shares of its key it sends to a one-node committee (v2).
    pub key_bytes_per_value: f64,
    /// Mean encryption time per client.
    pub encrypt_ms: f64,
    /// Aggregation time: combining K uploads into the published aggregate.
    pub aggregate_ms: f64,
    /// Decryption time of the aggregate (to the mean).
    pub decrypt_ms: f64,
    /// Plaintext FedAvg: summing K float32 vectors, same process, same data.
    pub plaintext_fedavg_ms: f64,
    /// Largest absolute error of a coordinate of the mean.
    pub max_error: f64,
    /// Root-mean-square error of the mean.
    pub rms_error: f64,
    /// The planner's guarantee on `max_error`.
    pub bound: Option<f64>,
    /// A whole round through the REST services on loopback with K concurrent clients:
    /// create, encrypt + upload, publish, fetch + decrypt.
    pub e2e_round_ms: Option<f64>,
    /// Peak resident memory of the aggregator process during that round (MiB).
    pub aggregator_peak_mib: Option<f64>,
    /// Anything the reader needs (why a figure is missing, the machine's limits).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub note: String,
    /// Aggregation time without decoding the uploads from their wire bytes (peers whose
    /// libraries separate the two; CryptFlow's aggregation works on the wire bytes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggregate_no_deser_ms: Option<f64>,
    /// Peak resident memory of the measuring process (MiB): a peer's whole run, K clients
    /// included.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_mib: Option<f64>,
    /// The measured software and its version (peers), e.g. `flwr 1.42.0`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// Times measured on `measured_d` values and extrapolated per ciphertext to `d`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub extrapolated: bool,
    /// The dimension actually measured when `extrapolated`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_d: Option<u64>,
}

impl Row {
    /// Upload size relative to float32.
    pub fn upload_ratio(&self) -> f64 {
        self.upload_bytes_per_value / 4.0
    }
}

/// Aggregation time of `r` relative to plaintext FedAvg at its (d, K): one baseline for every
/// row there — the fastest plaintext FedAvg any of `rows` measured at that (d, K) (CryptFlow's
/// loop in Rust, a peer's numpy sum) — so that systems are compared against the same number.
pub fn aggregate_ratio(rows: &[Row], r: &Row) -> f64 {
    let base = rows
        .iter()
        .filter(|o| o.d == r.d && o.k == r.k && o.plaintext_fedavg_ms > 0.0)
        .map(|o| o.plaintext_fedavg_ms)
        .fold(f64::INFINITY, f64::min);
    r.aggregate_ms / if base.is_finite() { base } else { r.plaintext_fedavg_ms.max(1e-9) }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "—".to_owned(), |x| format!("{x:.digits$}"))
}

fn sci(v: f64) -> String {
    format!("{v:.1e}")
}

fn dim(d: u64) -> String {
    let e = (d as f64).log10();
    if (e - e.round()).abs() < 1e-9 && d >= 10 {
        format!("10^{}", e.round() as u32)
    } else {
        d.to_string()
    }
}

/// The Markdown table (one row per configuration, in the given order).
///
/// ```
/// use cryptflow_benches::{markdown, Row};
/// let row = Row { system: "cryptflow".into(), d: 1_000_000, k: 8, precision: Some(1e-6),
///     upload_bytes_per_value: 4.44, download_bytes_per_value: 5.0, key_bytes_per_value: 0.1,
///     encrypt_ms: 17.0, aggregate_ms: 6.0, decrypt_ms: 5.0, plaintext_fedavg_ms: 1.0,
///     max_error: 8e-7, rms_error: 3e-7, bound: Some(9.5e-7), e2e_round_ms: None,
///     aggregator_peak_mib: None, ..Row::default() };
/// let md = markdown(&[row]);
/// assert!(md.contains("| cryptflow | 10^6 | 8 | 1e-6 | 4.44 (1.11×)"));
/// ```
pub fn markdown(rows: &[Row]) -> String {
    let mut s = String::new();
    s.push_str(
        "| system | d | K | target | upload B/value (× f32) | download B/value | key B/value | \
         encrypt ms | aggregate ms (× FedAvg) | decrypt ms | FedAvg ms | max error | RMS error | \
         bound | REST round ms | aggregator peak MiB |\n",
    );
    s.push_str("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n");
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {:.2} ({:.2}×) | {:.2} | {:.3} | {:.1} | {:.1} ({:.1}×) | {:.1} | {:.2} | {} | {} | {} | {} | {} |",
            r.system,
            dim(r.d),
            r.k,
            r.precision.map_or_else(|| "—".to_owned(), |p| format!("{p:.0e}")),
            r.upload_bytes_per_value,
            r.upload_ratio(),
            r.download_bytes_per_value,
            r.key_bytes_per_value,
            r.encrypt_ms,
            r.aggregate_ms,
            aggregate_ratio(rows, r),
            r.decrypt_ms,
            r.plaintext_fedavg_ms,
            sci(r.max_error),
            sci(r.rms_error),
            r.bound.map_or_else(|| "—".to_owned(), sci),
            opt(r.e2e_round_ms, 0),
            opt(r.aggregator_peak_mib, 0),
        );
    }
    // One line per distinct (system, note), naming the rows it applies to.
    let mut notes: Vec<(String, String, Vec<String>)> = Vec::new();
    for r in rows.iter().filter(|r| !r.note.is_empty()) {
        let at = match r.precision {
            Some(p) => format!("d={} K={} ε={p:.0e}", dim(r.d), r.k),
            None => format!("d={} K={}", dim(r.d), r.k),
        };
        match notes.iter_mut().find(|(s, n, _)| *s == r.system && *n == r.note) {
            Some((_, _, v)) => v.push(at),
            None => notes.push((r.system.clone(), r.note.clone(), vec![at])),
        }
    }
    let notes: Vec<String> = notes
        .into_iter()
        .map(|(system, note, at)| format!("- {system} ({}): {note}", at.join("; ")))
        .collect();
    if !notes.is_empty() {
        s.push('\n');
        s.push_str(&notes.join("\n"));
        s.push('\n');
    }
    s
}

/// The comparison with the peers: one line per row at the dimensions and client counts some
/// peer was measured at, CryptFlow first, then each peer in the order given. Empty when
/// there is no peer row.
///
/// ```
/// use cryptflow_benches::{peer_table, Row};
/// let ours = Row { system: "cryptflow".into(), d: 10_000, k: 8, upload_bytes_per_value: 3.9,
///     plaintext_fedavg_ms: 1.0, aggregate_ms: 2.0, ..Row::default() };
/// let peer = Row { system: "paillier-2048 (BatchCrypt)".into(), d: 10_000, k: 8,
///     upload_bytes_per_value: 4.8, plaintext_fedavg_ms: 1.0, aggregate_ms: 50.0,
///     extrapolated: true, measured_d: Some(2140), ..Row::default() };
/// let md = peer_table(&[ours, peer]);
/// assert!(md.contains("| paillier-2048 (BatchCrypt) | — | 10^4 | 8 | 4.80 (1.20×)"));
/// assert!(md.contains("from 2140 values"));
/// ```
pub fn peer_table(rows: &[Row]) -> String {
    let is_ours = |r: &Row| r.system.starts_with("cryptflow");
    let points: Vec<(u64, u32)> = {
        let mut p: Vec<(u64, u32)> =
            rows.iter().filter(|r| !is_ours(r)).map(|r| (r.d, r.k)).collect();
        p.sort_unstable();
        p.dedup();
        p
    };
    if points.is_empty() {
        return String::new();
    }
    let mut s = String::from(
        "| system | version | d | K | upload B/value (× f32) | encrypt ms | aggregate ms (× FedAvg) | \
         aggregate w/o deserialisation ms | decrypt ms | max error | peak MiB | measured |\n\
         |---|---|---|---|---|---|---|---|---|---|---|---|\n",
    );
    let mut ordered: Vec<&Row> = rows.iter().filter(|r| is_ours(r)).collect();
    ordered.extend(rows.iter().filter(|r| !is_ours(r)));
    for &(d, k) in &points {
        for r in ordered.iter().filter(|r| r.d == d && r.k == k) {
            let system = match r.precision {
                Some(p) => format!("{} (ε = {p:.0e})", r.system),
                None => r.system.clone(),
            };
            let _ = writeln!(
                s,
                "| {system} | {} | {} | {k} | {:.2} ({:.2}×) | {:.1} | {:.1} ({:.1}×) | {} | {:.1} | {} | {} | {} |",
                r.version.as_deref().unwrap_or("—"),
                dim(d),
                r.upload_bytes_per_value,
                r.upload_ratio(),
                r.encrypt_ms,
                r.aggregate_ms,
                aggregate_ratio(rows, r),
                opt(r.aggregate_no_deser_ms, 1),
                r.decrypt_ms,
                sci(r.max_error),
                opt(r.peak_mib.or(r.aggregator_peak_mib), 0),
                match (r.extrapolated, r.measured_d) {
                    (true, Some(m)) => format!("extrapolated from {m} values"),
                    (true, None) => "extrapolated".to_owned(),
                    _ => "measured".to_owned(),
                },
            );
        }
    }
    s
}

/// JSON lines, one row each.
pub fn json_lines(rows: &[Row]) -> String {
    rows.iter().filter_map(|r| serde_json::to_string(r).ok()).map(|l| l + "\n").collect()
}

/// Reads JSON lines written by [`json_lines`] (or a peer script); blank lines are skipped.
pub fn parse_json_lines(text: &str) -> Result<Vec<Row>, String> {
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("line {}: {e}", i + 1)))
        .collect()
}

const COLOURS: [&str; 16] = [
    "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf",
    "#393b79", "#bcbd22", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd", "#636363",
];

/// Series `i`'s colour, and a dash pattern once the colours repeat.
fn style(i: usize) -> (&'static str, &'static str) {
    const DASHES: [&str; 3] = ["", " stroke-dasharray=\"6 3\"", " stroke-dasharray=\"2 2\""];
    (COLOURS[i % COLOURS.len()], DASHES[(i / COLOURS.len()) % DASHES.len()])
}

/// An SVG with two panels against d (log–log): upload size relative to float32, and
/// aggregation time relative to plaintext FedAvg; one line per (system, K, precision).
pub fn svg(rows: &[Row]) -> String {
    let mut series: Vec<(String, Vec<&Row>)> = Vec::new();
    for r in rows {
        let name = format!(
            "{} K={}{}{}",
            r.system,
            r.k,
            r.precision.map_or_else(String::new, |p| format!(" ε={p:.0e}")),
            if r.extrapolated { " (extrapolated)" } else { "" }
        );
        match series.iter_mut().find(|(n, _)| *n == name) {
            Some((_, v)) => v.push(r),
            None => series.push((name, vec![r])),
        }
    }
    for (_, v) in &mut series {
        v.sort_by_key(|r| r.d);
    }
    let (w, h, pad) = (460.0, 300.0, 55.0);
    let mut s = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{}\" height=\"{}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n",
        2.0 * w + 20.0,
        h + 40.0 + 16.0 * series.len() as f64
    );
    type Metric<'a> = Box<dyn Fn(&Row) -> f64 + 'a>;
    let panels: [(&str, Metric<'_>); 2] = [
        ("upload bytes / float32 bytes", Box::new(Row::upload_ratio)),
        ("aggregation time / plaintext FedAvg time", Box::new(|r: &Row| aggregate_ratio(rows, r))),
    ];
    let (dmin, dmax) = rows.iter().fold((f64::MAX, f64::MIN), |(a, b), r| {
        let x = (r.d.max(1) as f64).log10();
        (a.min(x), b.max(x))
    });
    let (dmin, dmax) = if dmin >= dmax { (dmin - 1.0, dmin + 1.0) } else { (dmin, dmax) };
    for (p, (title, f)) in panels.iter().enumerate() {
        let x0 = p as f64 * (w + 20.0);
        let vals: Vec<f64> = rows.iter().map(f).filter(|v| *v > 0.0).collect();
        let lo = vals.iter().copied().fold(f64::MAX, f64::min).log10().floor().min(0.0);
        let hi = vals.iter().copied().fold(f64::MIN, f64::max).log10().ceil().max(lo + 1.0);
        let px = |d: f64| x0 + pad + (d - dmin) / (dmax - dmin) * (w - pad - 15.0);
        let py = |v: f64| 20.0 + (hi - v.max(1e-12).log10()) / (hi - lo) * (h - 50.0);
        let _ =
            writeln!(s, "<text x=\"{}\" y=\"14\" font-weight=\"bold\">{title}</text>", x0 + pad);
        let _ = writeln!(
            s,
            "<rect x=\"{}\" y=\"20\" width=\"{}\" height=\"{}\" fill=\"none\" stroke=\"#888\"/>",
            x0 + pad,
            w - pad - 15.0,
            h - 50.0
        );
        let mut e = lo;
        while e <= hi + 1e-9 {
            let y = py(10f64.powf(e));
            let _ = writeln!(
                s,
                "<line x1=\"{}\" x2=\"{}\" y1=\"{y:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>",
                x0 + pad,
                x0 + w - 15.0,
                x0 + pad - 4.0,
                y + 4.0,
                if (0.0..4.0).contains(&e) { format!("{}", 10f64.powf(e)) } else { format!("1e{e}") }
            );
            e += 1.0;
        }
        let mut d = dmin.ceil();
        while d <= dmax + 1e-9 {
            let x = px(d);
            let _ = writeln!(
                s,
                "<text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\">10^{d}</text>",
                h - 14.0
            );
            d += 1.0;
        }
        let _ = writeln!(
            s,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">d (values per update)</text>",
            x0 + w / 2.0,
            h + 2.0
        );
        // The 1× line.
        let y1 = py(1.0);
        let _ = writeln!(
            s,
            "<line x1=\"{}\" x2=\"{}\" y1=\"{y1:.1}\" y2=\"{y1:.1}\" stroke=\"#000\" stroke-dasharray=\"4 3\"/>",
            x0 + pad,
            x0 + w - 15.0
        );
        for (i, (_, pts)) in series.iter().enumerate() {
            let (colour, dash) = style(i);
            let coords: Vec<String> = pts
                .iter()
                .filter(|r| f(r) > 0.0)
                .map(|r| format!("{:.1},{:.1}", px((r.d as f64).log10()), py(f(r))))
                .collect();
            let _ = writeln!(
                s,
                "<polyline points=\"{}\" fill=\"none\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/>",
                coords.join(" ")
            );
            for c in &coords {
                let (cx, cy) = c.split_once(',').unwrap_or(("0", "0"));
                let _ = writeln!(s, "<circle cx=\"{cx}\" cy=\"{cy}\" r=\"3\" fill=\"{colour}\"/>");
            }
        }
    }
    for (i, (name, _)) in series.iter().enumerate() {
        let y = h + 20.0 + 16.0 * i as f64;
        let (colour, dash) = style(i);
        let _ = writeln!(
            s,
            "<line x1=\"{pad}\" x2=\"{}\" y1=\"{y}\" y2=\"{y}\" stroke=\"{colour}\" stroke-width=\"2\"{dash}/><text x=\"{}\" y=\"{}\">{}</text>",
            pad + 24.0,
            pad + 30.0,
            y + 4.0,
            name.replace('&', "&amp;").replace('<', "&lt;")
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(system: &str, d: u64, k: u32, up: f64) -> Row {
        Row {
            system: system.into(),
            d,
            k,
            precision: Some(1e-6),
            upload_bytes_per_value: up,
            download_bytes_per_value: 5.0,
            key_bytes_per_value: 0.1,
            encrypt_ms: 1.0,
            aggregate_ms: 2.0,
            decrypt_ms: 1.0,
            plaintext_fedavg_ms: 0.5,
            max_error: 1e-7,
            rms_error: 5e-8,
            bound: Some(9.5e-7),
            e2e_round_ms: Some(12.0),
            aggregator_peak_mib: None,
            note: "n".into(),
            ..Row::default()
        }
    }

    #[test]
    fn renderings_agree_and_round_trip() {
        let rows = vec![row("cryptflow", 10_000, 8, 9.0), row("cryptflow", 100_000, 8, 4.5)];
        assert_eq!(parse_json_lines(&json_lines(&rows)).unwrap(), rows);
        let md = markdown(&rows);
        assert_eq!(md.lines().filter(|l| l.starts_with("| cryptflow")).count(), 2);
        assert!(md.contains("| 10^5 | 8 | 1e-6 | 4.50 (1.12×)") && md.contains("(4.0×)"), "{md}");
        let svg = svg(&rows);
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<polyline").count(), 2); // one series, two panels
        assert!(parse_json_lines("{not json").is_err());
        assert_eq!(peer_table(&rows), "", "no peer, no comparison");
    }

    #[test]
    fn peer_rows_round_trip_and_line_up_with_ours() {
        let mut peer = row("flower-secagg+", 100_000, 8, 8.3);
        peer.precision = None;
        peer.aggregate_no_deser_ms = Some(1.5);
        peer.peak_mib = Some(300.0);
        peer.version = Some("flwr 1.42.0".into());
        let rows = vec![row("cryptflow", 100_000, 8, 4.5), row("cryptflow", 10_000, 64, 4.0), peer];
        assert_eq!(parse_json_lines(&json_lines(&rows)).unwrap(), rows);
        let t = peer_table(&rows);
        // Only the peer's (d, K): CryptFlow's row there first, then the peer's.
        let lines: Vec<&str> = t.lines().skip(2).collect();
        assert_eq!(lines.len(), 2, "{t}");
        assert!(lines[0].starts_with("| cryptflow (ε = 1e-6) | — | 10^5 | 8 | 4.50"), "{t}");
        assert!(lines[1].contains("| flwr 1.42.0 | 10^5 | 8 | 8.30 (2.08×)"), "{t}");
        assert!(lines[1].contains("| 1.5 |") && lines[1].contains("| 300 | measured |"), "{t}");
        // One FedAvg baseline per (d, K): the peer's slower numpy sum does not flatter it.
        let mut slow = rows[2].clone();
        slow.plaintext_fedavg_ms = 50.0;
        slow.aggregate_ms = 10.0;
        assert_eq!(aggregate_ratio(&[rows[0].clone(), slow.clone()], &slow), 20.0);
        // A peer row written by a script without the optional fields still parses.
        let old = r#"{"system":"tenseal","d":10,"k":2,"precision":null,"upload_bytes_per_value":1.0,"download_bytes_per_value":1.0,"key_bytes_per_value":0.0,"encrypt_ms":1.0,"aggregate_ms":1.0,"decrypt_ms":1.0,"plaintext_fedavg_ms":1.0,"max_error":0.0,"rms_error":0.0,"bound":null,"e2e_round_ms":null,"aggregator_peak_mib":null}"#;
        assert_eq!(parse_json_lines(old).unwrap()[0].version, None);
    }
}
