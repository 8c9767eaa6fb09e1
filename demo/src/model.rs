//! The demo's data and model: the UCI handwritten digits (shipped in `data/`, see its
//! README for provenance and licence) and a one-hidden-layer MLP (or softmax regression)
//! trained with minibatch SGD.

use flate2::read::GzDecoder;
use ndarray::{Array1, Array2, ArrayD, ArrayView2, Axis, IxDyn};
use std::io::Read;

/// The dataset, compressed, as shipped by scikit-learn 1.5.2 (`data/README.md`).
const DIGITS_GZ: &[u8] = include_bytes!("../data/digits.csv.gz");

/// Classes.
pub const CLASSES: usize = 10;
/// Features (8×8 pixels).
pub const FEATURES: usize = 64;

/// Labelled examples.
#[derive(Clone, Debug)]
pub struct Dataset {
    /// One row per example, features scaled to [0, 1].
    pub x: Array2<f64>,
    /// Labels 0..10.
    pub y: Vec<usize>,
}

impl Dataset {
    /// The 1,797 digits.
    pub fn digits() -> Result<Self, String> {
        let mut text = String::new();
        GzDecoder::new(DIGITS_GZ)
            .read_to_string(&mut text)
            .map_err(|e| format!("digits dataset: {e}"))?;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for (i, line) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            let fields: Vec<&str> = line.split(',').collect();
            if fields.len() != FEATURES + 1 {
                return Err(format!("digits dataset, line {}: {} fields", i + 1, fields.len()));
            }
            for f in &fields[..FEATURES] {
                let v: f64 = f.trim().parse().map_err(|e| format!("line {}: {e}", i + 1))?;
                x.push(v / 16.0);
            }
            let label: usize =
                fields[FEATURES].trim().parse().map_err(|e| format!("line {}: {e}", i + 1))?;
            if label >= CLASSES {
                return Err(format!("line {}: label {label}", i + 1));
            }
            y.push(label);
        }
        let n = y.len();
        let x = Array2::from_shape_vec((n, FEATURES), x).map_err(|e| e.to_string())?;
        Ok(Self { x, y })
    }

    /// Number of examples.
    pub fn len(&self) -> usize {
        self.y.len()
    }

    /// The examples at `idx`, in that order.
    pub fn select(&self, idx: &[usize]) -> Self {
        Self { x: self.x.select(Axis(0), idx), y: idx.iter().map(|&i| self.y[i]).collect() }
    }
}

/// A deterministic generator (SplitMix64): the demo is reproducible from its seed.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// Seeded.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Fisher–Yates.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// An MLP `64 → hidden (ReLU) → 10` with softmax, or softmax regression when `hidden` is 0.
#[derive(Clone, Debug, PartialEq)]
pub struct Model {
    layers: Vec<(Array2<f64>, Array1<f64>)>,
}

impl Model {
    /// Random initialisation (uniform ±1/√fan_in).
    pub fn new(hidden: usize, rng: &mut Rng) -> Self {
        let dims: Vec<usize> =
            if hidden == 0 { vec![FEATURES, CLASSES] } else { vec![FEATURES, hidden, CLASSES] };
        let layers = dims
            .windows(2)
            .map(|w| {
                let a = 1.0 / (w[0] as f64).sqrt();
                let weights = Array2::from_shape_fn((w[1], w[0]), |_| (2.0 * rng.unit() - 1.0) * a);
                (weights, Array1::zeros(w[1]))
            })
            .collect();
        Self { layers }
    }

    /// The parameters as named tensors (`fc1.weight`, `fc1.bias`, …).
    pub fn tensors(&self) -> Vec<Tensor> {
        let mut out = Vec::new();
        for (i, (w, b)) in self.layers.iter().enumerate() {
            out.push(Tensor { name: format!("fc{}.weight", i + 1), values: w.clone().into_dyn() });
            out.push(Tensor { name: format!("fc{}.bias", i + 1), values: b.clone().into_dyn() });
        }
        out
    }

    /// Number of parameters.
    pub fn parameters(&self) -> usize {
        self.layers.iter().map(|(w, b)| w.len() + b.len()).sum()
    }

    /// Adds `delta` (tensors in [`Model::tensors`] order) to the parameters.
    pub fn apply(&mut self, delta: &[Tensor]) -> Result<(), String> {
        if delta.len() != 2 * self.layers.len() {
            return Err(format!("{} tensors for {} layers", delta.len(), self.layers.len()));
        }
        for (i, (w, b)) in self.layers.iter_mut().enumerate() {
            let (dw, db) = (&delta[2 * i].values, &delta[2 * i + 1].values);
            if dw.shape() != w.shape() || db.shape() != b.shape() {
                return Err(format!("layer {}: shape mismatch", i + 1));
            }
            let dw = dw.view().into_dimensionality::<ndarray::Ix2>().map_err(|e| e.to_string())?;
            let db = db.view().into_dimensionality::<ndarray::Ix1>().map_err(|e| e.to_string())?;
            w.zip_mut_with(&dw, |a, d| *a += d);
            b.zip_mut_with(&db, |a, d| *a += d);
        }
        Ok(())
    }

    /// `self − base` per tensor, each value clipped to `[−clip, clip]`.
    pub fn delta_from(&self, base: &Model, clip: f64) -> Vec<Tensor> {
        self.tensors()
            .into_iter()
            .zip(base.tensors())
            .map(|(mut t, b)| {
                t.values.zip_mut_with(&b.values, |a, b| *a = (*a - b).clamp(-clip, clip));
                t
            })
            .collect()
    }

    /// Class probabilities and the hidden activations of every layer.
    fn forward(&self, x: ArrayView2<'_, f64>) -> Vec<Array2<f64>> {
        let mut acts = vec![x.to_owned()];
        for (i, (w, b)) in self.layers.iter().enumerate() {
            let mut z = acts[i].dot(&w.t()) + b;
            if i + 1 < self.layers.len() {
                z.mapv_inplace(|v| v.max(0.0));
            } else {
                for mut row in z.rows_mut() {
                    let m = row.fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                    row.mapv_inplace(|v| (v - m).exp());
                    let s = row.sum();
                    row /= s;
                }
            }
            acts.push(z);
        }
        acts
    }

    /// Fraction of `data` classified correctly.
    pub fn accuracy(&self, data: &Dataset) -> f64 {
        let acts = self.forward(data.x.view());
        let p = &acts[acts.len() - 1];
        let correct = p
            .rows()
            .into_iter()
            .zip(&data.y)
            .filter(|(row, &y)| {
                let best = row.iter().enumerate().fold((0, f64::NEG_INFINITY), |a, (i, &v)| {
                    if v > a.1 {
                        (i, v)
                    } else {
                        a
                    }
                });
                best.0 == y
            })
            .count();
        correct as f64 / data.len().max(1) as f64
    }

    /// `epochs` passes of minibatch SGD (cross-entropy) over `data`, in an order drawn
    /// from `rng`.
    pub fn train(&mut self, data: &Dataset, epochs: usize, batch: usize, lr: f64, rng: &mut Rng) {
        let mut order: Vec<usize> = (0..data.len()).collect();
        for _ in 0..epochs {
            rng.shuffle(&mut order);
            for chunk in order.chunks(batch.max(1)) {
                let part = data.select(chunk);
                self.step(&part, lr);
            }
        }
    }

    fn step(&mut self, data: &Dataset, lr: f64) {
        let acts = self.forward(data.x.view());
        let n = data.len() as f64;
        let mut grad = acts[acts.len() - 1].clone();
        for (mut row, &y) in grad.rows_mut().into_iter().zip(&data.y) {
            row[y] -= 1.0;
        }
        grad /= n;
        for i in (0..self.layers.len()).rev() {
            let input = &acts[i];
            let dw = grad.t().dot(input);
            let db = grad.sum_axis(Axis(0));
            let next = if i > 0 {
                let mut g = grad.dot(&self.layers[i].0);
                g.zip_mut_with(input, |g, &a| {
                    if a <= 0.0 {
                        *g = 0.0
                    }
                });
                Some(g)
            } else {
                None
            };
            let (w, b) = &mut self.layers[i];
            w.scaled_add(-lr, &dw);
            b.scaled_add(-lr, &db);
            if let Some(g) = next {
                grad = g;
            }
        }
    }
}

/// A named parameter tensor of the model (the SDK's tensors carry `f32` or `f64` values; the
/// demo trains in `f64`).
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name (`fc1.weight`, …).
    pub name: String,
    /// Values.
    pub values: ArrayD<f64>,
}

impl Tensor {
    /// As the SDK's tensor.
    pub fn to_sdk(&self) -> cryptflow_client::Tensor {
        cryptflow_client::Tensor {
            name: self.name.clone(),
            values: cryptflow_client::TensorValues::F64(self.values.clone()),
        }
    }

    /// From the SDK's tensor.
    pub fn from_sdk(t: &cryptflow_client::Tensor) -> Self {
        Self { name: t.name.clone(), values: t.values.to_f64() }
    }
}

/// Largest absolute difference between two tensor lists of the same layout.
pub fn max_abs_diff(a: &[Tensor], b: &[Tensor]) -> f64 {
    a.iter()
        .zip(b)
        .flat_map(|(x, y)| x.values.iter().zip(y.values.iter()).map(|(p, q)| (p - q).abs()))
        .fold(0.0, f64::max)
}

/// The weighted mean of tensor lists (plaintext FedAvg).
pub fn weighted_mean(updates: &[(Vec<Tensor>, f64)]) -> Vec<Tensor> {
    let total: f64 = updates.iter().map(|(_, w)| w).sum();
    let mut out: Vec<Tensor> = updates[0]
        .0
        .iter()
        .map(|t| Tensor { name: t.name.clone(), values: ArrayD::zeros(IxDyn(t.values.shape())) })
        .collect();
    for (ts, w) in updates {
        for (o, t) in out.iter_mut().zip(ts) {
            o.values.scaled_add(*w / total, &t.values);
        }
    }
    out
}

/// Splits `0..n` into `k` shards of unequal sizes (proportional to 1, 2, 3, 1, 2, 3, …),
/// so that weighting by sample count matters.
pub fn shard_sizes(n: usize, k: usize) -> Vec<usize> {
    let parts: Vec<usize> = (0..k).map(|i| 1 + i % 3).collect();
    let total: usize = parts.iter().sum();
    let mut sizes: Vec<usize> = parts.iter().map(|p| n * p / total).collect();
    let assigned: usize = sizes.iter().sum();
    if let Some(last) = sizes.last_mut() {
        *last += n - assigned;
    }
    sizes
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digits_load_and_a_model_learns_them() {
        let data = Dataset::digits().unwrap();
        assert_eq!((data.len(), data.x.ncols()), (1797, 64));
        assert!(data.x.iter().all(|v| (0.0..=1.0).contains(v)));
        let mut rng = Rng::new(1);
        let mut m = Model::new(16, &mut rng);
        let before = m.accuracy(&data);
        m.train(&data, 3, 16, 0.1, &mut rng);
        let after = m.accuracy(&data);
        assert!(after > 0.85 && after > before + 0.3, "{before} → {after}");
        // A zero delta leaves the model unchanged; a delta round-trips through tensors.
        let base = m.clone();
        let mut moved = m.clone();
        moved.train(&data.select(&[0, 1, 2, 3]), 1, 4, 0.1, &mut rng);
        let d = moved.delta_from(&base, 10.0);
        m.apply(&d).unwrap();
        assert!(max_abs_diff(&m.tensors(), &moved.tensors()) < 1e-12);
    }

    #[test]
    fn shards_cover_everything() {
        for (n, k) in [(1437, 8), (10, 3), (100, 1)] {
            let s = shard_sizes(n, k);
            assert_eq!(s.len(), k);
            assert_eq!(s.iter().sum::<usize>(), n);
        }
    }
}
