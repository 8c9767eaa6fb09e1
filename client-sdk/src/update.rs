//! Model updates: a flat vector or named tensors, of `f32` or `f64` values, matched against a
//! round's layout. Values are kept in their own type (an `f32` model is not widened to `f64`
//! in memory) and read block by block by the encryptor.

use crate::error::{ClientError, Result};
use cryptflow_he::Values;
use cryptflow_services::api::round::{Layout, TensorLayout};
use ndarray::{Array1, ArrayD, IxDyn};

/// The values of one tensor (any memory order; read in logical row-major order).
#[derive(Clone, Debug, PartialEq)]
pub enum TensorValues {
    /// 32-bit floats.
    F32(ArrayD<f32>),
    /// 64-bit floats.
    F64(ArrayD<f64>),
}

impl TensorValues {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            Self::F32(a) => a.len(),
            Self::F64(a) => a.len(),
        }
    }
    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Shape.
    pub fn shape(&self) -> &[usize] {
        match self {
            Self::F32(a) => a.shape(),
            Self::F64(a) => a.shape(),
        }
    }
    /// The values widened to `f64`, in logical order.
    pub fn iter(&self) -> Box<dyn Iterator<Item = f64> + '_> {
        match self {
            Self::F32(a) => Box::new(a.iter().map(|&v| v as f64)),
            Self::F64(a) => Box::new(a.iter().copied()),
        }
    }
    /// The values as `f64` (a copy for `f32`).
    pub fn to_f64(&self) -> ArrayD<f64> {
        match self {
            Self::F32(a) => a.mapv(f64::from),
            Self::F64(a) => a.clone(),
        }
    }
    /// Contiguous in logical order (or a copy that is).
    fn contiguous(&self) -> std::borrow::Cow<'_, Self> {
        let standard = match self {
            Self::F32(a) => a.is_standard_layout(),
            Self::F64(a) => a.is_standard_layout(),
        };
        if standard {
            return std::borrow::Cow::Borrowed(self);
        }
        std::borrow::Cow::Owned(match self {
            Self::F32(a) => Self::F32(a.as_standard_layout().into_owned()),
            Self::F64(a) => Self::F64(a.as_standard_layout().into_owned()),
        })
    }
    fn read(&self, start: usize, out: &mut [f64]) {
        match self {
            Self::F32(a) => a.as_slice().unwrap_or(&[]).read(start, out),
            Self::F64(a) => a.as_slice().unwrap_or(&[]).read(start, out),
        }
    }
}

/// One named tensor of a model update.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Name, as in the round's layout (e.g. `fc1.weight`).
    pub name: String,
    /// Values.
    pub values: TensorValues,
}

/// What a client submits and what it gets back as the mean: the same shape either way.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelUpdate {
    /// A flat vector, for rounds laid out as `dimension`.
    Vector(TensorValues),
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

    /// Iterates over all values in layout order, as `f64`.
    pub fn iter(&self) -> Box<dyn Iterator<Item = f64> + '_> {
        match self {
            ModelUpdate::Vector(v) => v.iter(),
            ModelUpdate::Tensors(ts) => Box::new(ts.iter().flat_map(|t| t.values.iter())),
        }
    }

    /// The layout this update has (what a round for it should declare).
    ///
    /// ```
    /// use cryptflow_client::{ModelUpdate, Tensor, TensorValues};
    /// use cryptflow_services::api::round::Layout;
    /// let u = ModelUpdate::Tensors(vec![Tensor {
    ///     name: "w".into(),
    ///     values: TensorValues::F32(ndarray::ArrayD::zeros(ndarray::IxDyn(&[2, 3]))),
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

    /// Named tensors given in another order than the round's layout, put in its order (by
    /// name; moved, not copied, unless the update is shared). Anything else comes back as it
    /// is, for [`ModelUpdate::check_layout`] to name what differs.
    pub(crate) fn in_layout_order(
        update: std::sync::Arc<Self>,
        layout: &Layout,
    ) -> Result<std::sync::Arc<Self>> {
        let (ModelUpdate::Tensors(ts), Layout::Tensors(want)) = (update.as_ref(), layout) else {
            return Ok(update);
        };
        if ts.len() != want.len() || ts.iter().zip(want).all(|(t, w)| t.name == w.name) {
            return Ok(update);
        }
        let Some(order) = want
            .iter()
            .map(|w| ts.iter().position(|t| t.name == w.name))
            .collect::<Option<Vec<usize>>>()
        else {
            return Ok(update);
        };
        let tensors = match std::sync::Arc::try_unwrap(update) {
            Ok(ModelUpdate::Tensors(ts)) => ts,
            Ok(other) => return Ok(std::sync::Arc::new(other)),
            Err(shared) => match shared.as_ref() {
                ModelUpdate::Tensors(ts) => ts.clone(),
                ModelUpdate::Vector(_) => return Ok(shared),
            },
        };
        let mut slots: Vec<Option<Tensor>> = tensors.into_iter().map(Some).collect();
        let ordered = order
            .iter()
            .map(|&i| slots.get_mut(i).and_then(Option::take))
            .collect::<Option<Vec<Tensor>>>()
            .ok_or_else(|| ClientError::Input("the update names a tensor twice".into()))?;
        Ok(std::sync::Arc::new(ModelUpdate::Tensors(ordered)))
    }

    /// Checks the update against a round's layout; the error names the first difference or
    /// the first value that is not finite.
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
                let has = |name: &str, of: &[Tensor]| of.iter().any(|t| t.name == name);
                let missing: Vec<&str> =
                    want.iter().map(|w| w.name.as_str()).filter(|n| !has(n, ts)).collect();
                let extra: Vec<&str> = ts
                    .iter()
                    .map(|t| t.name.as_str())
                    .filter(|n| !want.iter().any(|w| w.name == *n))
                    .collect();
                if !missing.is_empty() || !extra.is_empty() {
                    return Err(ClientError::Input(format!(
                        "the update's tensors differ from the round's: missing {missing:?}, not in \
                         the round {extra:?}"
                    )));
                }
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
            return Err(ClientError::Input(format!("value {i} (in layout order) is not finite")));
        }
        Ok(())
    }

    /// Rebuilds an update of `layout`'s shape from flat `f64` values (the first
    /// `layout.values()` of `flat`).
    pub fn from_flat(layout: &Layout, flat: Vec<f64>) -> Result<Self> {
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
            Layout::Dimension(_) => {
                let mut flat = flat;
                flat.truncate(need);
                Ok(ModelUpdate::Vector(TensorValues::F64(Array1::from(flat).into_dyn())))
            }
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
                    out.push(Tensor { name: t.name.clone(), values: TensorValues::F64(values) });
                }
                Ok(ModelUpdate::Tensors(out))
            }
        }
    }

    /// The same update with every tensor in standard (row-major) memory order: the same `Arc`
    /// if they already are, else a copy of the update.
    pub(crate) fn standard_layout(self: &std::sync::Arc<Self>) -> std::sync::Arc<Self> {
        let standard = |v: &TensorValues| matches!(v.contiguous(), std::borrow::Cow::Borrowed(_));
        let all = match self.as_ref() {
            ModelUpdate::Vector(v) => standard(v),
            ModelUpdate::Tensors(ts) => ts.iter().all(|t| standard(&t.values)),
        };
        if all {
            return self.clone();
        }
        std::sync::Arc::new(match self.as_ref() {
            ModelUpdate::Vector(v) => ModelUpdate::Vector(v.contiguous().into_owned()),
            ModelUpdate::Tensors(ts) => ModelUpdate::Tensors(
                ts.iter()
                    .map(|t| Tensor {
                        name: t.name.clone(),
                        values: t.values.contiguous().into_owned(),
                    })
                    .collect(),
            ),
        })
    }

    /// The update as one block-readable vector for the encryptor (contiguous copies only of
    /// tensors that are not in standard order).
    pub(crate) fn values(&self) -> UpdateValues<'_> {
        let parts: Vec<std::borrow::Cow<'_, TensorValues>> = match self {
            ModelUpdate::Vector(v) => vec![v.contiguous()],
            ModelUpdate::Tensors(ts) => ts.iter().map(|t| t.values.contiguous()).collect(),
        };
        UpdateValues { parts }
    }
}

/// An update's tensors read as one vector, block by block.
pub(crate) struct UpdateValues<'a> {
    parts: Vec<std::borrow::Cow<'a, TensorValues>>,
}

impl Values for UpdateValues<'_> {
    fn len(&self) -> usize {
        self.parts.iter().map(|p| p.len()).sum()
    }
    fn read(&self, start: usize, out: &mut [f64]) {
        let mut skip = start;
        let mut filled = 0;
        for p in &self.parts {
            if filled == out.len() {
                return;
            }
            let len = p.len();
            if skip >= len {
                skip -= len;
                continue;
            }
            let take = (len - skip).min(out.len() - filled);
            p.read(skip, &mut out[filled..filled + take]);
            filled += take;
            skip = 0;
        }
    }
}

impl From<Array1<f64>> for ModelUpdate {
    fn from(v: Array1<f64>) -> Self {
        ModelUpdate::Vector(TensorValues::F64(v.into_dyn()))
    }
}

impl From<Array1<f32>> for ModelUpdate {
    fn from(v: Array1<f32>) -> Self {
        ModelUpdate::Vector(TensorValues::F32(v.into_dyn()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Flattening then rebuilding gives back the same tensors, whatever the shapes, and the
        /// block reader sees the same values as the iterator, from any offset.
        #[test]
        fn tensors_round_trip(shapes in proptest::collection::vec(
            proptest::collection::vec(1usize..5, 0..4), 1..5), start in 0usize..40) {
            let mut k = 0.0;
            let ts: Vec<Tensor> = shapes.iter().enumerate().map(|(i, s)| {
                let n: usize = s.iter().product();
                let v: Vec<f64> = (0..n).map(|_| { k += 0.5; k }).collect();
                let values = if i % 2 == 0 {
                    TensorValues::F64(ArrayD::from_shape_vec(IxDyn(s), v).unwrap())
                } else {
                    TensorValues::F32(ArrayD::from_shape_vec(IxDyn(s), v.iter().map(|&x| x as f32).collect()).unwrap())
                };
                Tensor { name: format!("t{i}"), values }
            }).collect();
            let u = ModelUpdate::Tensors(ts);
            let layout = u.layout();
            u.check_layout(&layout).unwrap();
            let flat: Vec<f64> = u.iter().collect();
            let values = u.values();
            let start = start.min(flat.len());
            let mut read = vec![0.0; flat.len() - start];
            values.read(start, &mut read);
            prop_assert_eq!(&read[..], &flat[start..]);
            let back = ModelUpdate::from_flat(&layout, flat.clone()).unwrap();
            prop_assert_eq!(back.iter().collect::<Vec<_>>(), flat);
        }
    }

    #[test]
    fn mismatches_are_named() {
        let u = ModelUpdate::from(Array1::<f64>::zeros(3));
        let e = u.check_layout(&Layout::Dimension(4)).unwrap_err().to_string();
        assert!(e.contains("3 values") && e.contains('4'), "{e}");
        let t = ModelUpdate::Tensors(vec![Tensor {
            name: "a".into(),
            values: TensorValues::F32(ArrayD::zeros(IxDyn(&[2, 2]))),
        }]);
        let want = Layout::Tensors(vec![TensorLayout { name: "a".into(), shape: vec![4] }]);
        assert!(t.check_layout(&want).unwrap_err().to_string().contains("`a` [2, 2]"));
        assert!(u.check_layout(&want).is_err() && t.check_layout(&Layout::Dimension(4)).is_err());
        let nan = ModelUpdate::from(Array1::from(vec![0.0, f64::NAN]));
        assert!(nan.check_layout(&Layout::Dimension(2)).unwrap_err().to_string().contains('1'));
    }

    #[test]
    fn named_tensors_are_taken_in_the_rounds_order_and_missing_ones_named() {
        let t = |name: &str, n: usize| Tensor {
            name: name.into(),
            values: TensorValues::F32(ArrayD::zeros(IxDyn(&[n]))),
        };
        let want = Layout::Tensors(vec![
            TensorLayout { name: "a".into(), shape: vec![1] },
            TensorLayout { name: "b".into(), shape: vec![2] },
        ]);
        let shuffled = std::sync::Arc::new(ModelUpdate::Tensors(vec![t("b", 2), t("a", 1)]));
        let ordered = ModelUpdate::in_layout_order(shuffled, &want).unwrap();
        ordered.check_layout(&want).unwrap();
        assert_eq!(ordered.layout(), want);
        let short = ModelUpdate::Tensors(vec![t("a", 1), t("c", 2)]);
        let e = short.check_layout(&want).unwrap_err().to_string();
        assert!(e.contains(r#"missing ["b"], not in the round ["c"]"#), "{e}");
        let twice = std::sync::Arc::new(ModelUpdate::Tensors(vec![t("b", 2), t("b", 2)]));
        let twice = ModelUpdate::in_layout_order(twice, &want).unwrap();
        assert!(twice.check_layout(&want).is_err());
    }

    #[test]
    fn fortran_order_tensors_are_read_in_logical_order() {
        use ndarray::ShapeBuilder;
        // [[1, 2, 3], [4, 5, 6]] in Fortran (column-major) memory order.
        let f =
            ArrayD::from_shape_vec(IxDyn(&[2, 3]).f(), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]).unwrap();
        assert!(!f.is_standard_layout());
        let u =
            ModelUpdate::Tensors(vec![Tensor { name: "x".into(), values: TensorValues::F64(f) }]);
        let mut out = vec![0.0; 6];
        u.values().read(0, &mut out);
        assert_eq!(out, vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
    }
}
