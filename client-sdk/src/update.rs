//! Model updates: a flat vector or named tensors, matched against a round's layout.

use crate::error::{ClientError, Result};
use cryptflow_services::api::aggregator::{Layout, TensorLayout};
use ndarray::{Array1, ArrayD, IxDyn};

/// One named tensor of a model update.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name, as in the round's layout (e.g. `fc1.weight`).
    pub name: String,
    /// Values; any memory order (they are read in logical row-major order).
    pub values: ArrayD<f64>,
}

/// What a client submits and what it gets back as the mean: the same shape either way.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelUpdate {
    /// A flat vector, for rounds laid out as `dimension`.
    Vector(Array1<f64>),
    /// Named tensors, for rounds laid out as `tensors`, in the layout's order.
    Tensors(Vec<Tensor>),
}

impl ModelUpdate {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            ModelUpdate::Vector(v) => v.len(),
            ModelUpdate::Tensors(ts) => ts.iter().map(|t| t.values.len()).sum(),
        }
    }

    /// True if there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Iterates over all values in layout order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = f64> + '_> {
        match self {
            ModelUpdate::Vector(v) => Box::new(v.iter().copied()),
            ModelUpdate::Tensors(ts) => Box::new(ts.iter().flat_map(|t| t.values.iter().copied())),
        }
    }

    /// The layout this update has (what a round for it should declare).
    ///
    /// ```
    /// use cryptflow_client::{ModelUpdate, Tensor};
    /// use cryptflow_services::api::aggregator::Layout;
    /// let u = ModelUpdate::Tensors(vec![Tensor {
    ///     name: "w".into(),
    ///     values: ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 3])),
    /// }]);
    /// assert_eq!(u.layout().values(), Some(6));
    /// assert!(matches!(u.layout(), Layout::Tensors(_)));
    /// ```
    pub fn layout(&self) -> Layout {
        match self {
            ModelUpdate::Vector(v) => Layout::Dimension(v.len() as u64),
            ModelUpdate::Tensors(ts) => Layout::Tensors(
                ts.iter()
                    .map(|t| TensorLayout {
                        name: t.name.clone(),
                        shape: t.values.shape().iter().map(|&s| s as u64).collect(),
                    })
                    .collect(),
            ),
        }
    }

    /// Checks the update against a round's layout; the error names the first difference.
    pub fn check_layout(&self, layout: &Layout) -> Result<()> {
        match (self, layout) {
            (ModelUpdate::Vector(v), Layout::Dimension(d)) => {
                if v.len() as u64 != *d {
                    return Err(ClientError::Input(format!(
                        "the update has {} values; the round expects {d}",
                        v.len()
                    )));
                }
            }
            (ModelUpdate::Tensors(ts), Layout::Tensors(want)) => {
                if ts.len() != want.len() {
                    return Err(ClientError::Input(format!(
                        "the update has {} tensors; the round expects {}",
                        ts.len(),
                        want.len()
                    )));
                }
                for (i, (t, w)) in ts.iter().zip(want).enumerate() {
                    let shape: Vec<u64> = t.values.shape().iter().map(|&s| s as u64).collect();
                    if t.name != w.name || shape != w.shape {
                        return Err(ClientError::Input(format!(
                            "tensor {i} is `{}` {shape:?}; the round expects `{}` {:?}",
                            t.name, w.name, w.shape
                        )));
                    }
                }
            }
            (ModelUpdate::Vector(_), Layout::Tensors(_)) => {
                return Err(ClientError::Input(
                    "the round is laid out as named tensors; submit tensors".into(),
                ))
            }
            (ModelUpdate::Tensors(_), Layout::Dimension(_)) => {
                return Err(ClientError::Input(
                    "the round is laid out as a flat vector; submit a vector".into(),
                ))
            }
        }
        if let Some(i) = self.iter().position(|x| !x.is_finite()) {
            return Err(ClientError::Input(format!("value {i} is not finite")));
        }
        Ok(())
    }

    /// Rebuilds an update of `layout`'s shape from flat values (the first `layout.values()`
    /// of `flat`).
    pub fn from_flat(layout: &Layout, flat: &[f64]) -> Result<Self> {
        let need = layout
            .values()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| ClientError::Input("the layout's size overflows".into()))?;
        if flat.len() < need {
            return Err(ClientError::Input(format!(
                "{} values cannot fill a layout of {need}",
                flat.len()
            )));
        }
        match layout {
            Layout::Dimension(_) => Ok(ModelUpdate::Vector(Array1::from(flat[..need].to_vec()))),
            Layout::Tensors(ts) => {
                let mut out = Vec::with_capacity(ts.len());
                let mut at = 0usize;
                for t in ts {
                    let shape: Vec<usize> = t.shape.iter().map(|&s| s as usize).collect();
                    let n: usize = shape.iter().product();
                    let values =
                        ArrayD::from_shape_vec(IxDyn(&shape), flat[at..at + n].to_vec())
                            .map_err(|e| ClientError::Input(format!("tensor `{}`: {e}", t.name)))?;
                    at += n;
                    out.push(Tensor { name: t.name.clone(), values });
                }
                Ok(ModelUpdate::Tensors(out))
            }
        }
    }
}

impl From<Array1<f64>> for ModelUpdate {
    fn from(v: Array1<f64>) -> Self {
        ModelUpdate::Vector(v)
    }
}

impl From<Array1<f32>> for ModelUpdate {
    fn from(v: Array1<f32>) -> Self {
        ModelUpdate::Vector(v.mapv(f64::from))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Flattening then rebuilding gives back the same tensors, whatever the shapes.
        #[test]
        fn tensors_round_trip(shapes in proptest::collection::vec(
            proptest::collection::vec(1usize..5, 0..4), 1..5)) {
            let mut k = 0.0;
            let ts: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| {
                let n: usize = s.iter().product();
                let v: Vec<f64> = (0..n).map(|_| { k += 0.5; k }).collect();
                Tensor { name: format!("t{i}"), values: ArrayD::from_shape_vec(IxDyn(s), v).unwrap() }
            }).collect();
            let u = ModelUpdate::Tensors(ts);
            let layout = u.layout();
            u.check_layout(&layout).unwrap();
            let flat: Vec<f64> = u.iter().collect();
            prop_assert_eq!(ModelUpdate::from_flat(&layout, &flat).unwrap(), u);
        }
    }

    #[test]
    fn mismatches_are_named() {
        let u = ModelUpdate::Vector(Array1::zeros(3));
        let e = u.check_layout(&Layout::Dimension(4)).unwrap_err().to_string();
        assert!(e.contains("3 values") && e.contains("4"), "{e}");
        let t = ModelUpdate::Tensors(vec![Tensor {
            name: "a".into(),
            values: ArrayD::zeros(IxDyn(&[2, 2])),
        }]);
        let want = Layout::Tensors(vec![TensorLayout { name: "a".into(), shape: vec![4] }]);
        assert!(t.check_layout(&want).unwrap_err().to_string().contains("`a` [2, 2]"));
        assert!(u.check_layout(&want).is_err() && t.check_layout(&Layout::Dimension(4)).is_err());
        let nan = ModelUpdate::Vector(Array1::from(vec![0.0, f64::NAN]));
        assert!(nan.check_layout(&Layout::Dimension(2)).unwrap_err().to_string().contains("1"));
    }
}
