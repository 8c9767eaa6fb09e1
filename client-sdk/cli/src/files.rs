//! Model-update files: NumPy `.npy` (one array) and safetensors (named tensors).
//!
//! A 1-D `.npy` array is a flat vector (a `dimension` round); an array of any other rank is
//! one tensor named `array`. A safetensors file is its tensors in name order. Values are
//! `float32` or `float64` (little- or big-endian `.npy`, C or Fortran order); the mean is
//! written back in the dtypes of a reference file (`--like`) or of `--dtype`.

use crate::output::CliError;
use cryptflow_client::{ModelUpdate, Tensor};
use ndarray::{ArrayD, IxDyn};
use ndarray_npy::{ReadNpyError, ReadNpyExt, WriteNpyExt};
use safetensors::tensor::{Dtype, TensorView};
use safetensors::SafeTensors;
use std::path::Path;

/// Name of the single tensor of a multi-dimensional `.npy` file.
pub const NPY_TENSOR: &str = "array";

/// File formats.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Format {
    /// NumPy `.npy`.
    Npy,
    /// safetensors.
    Safetensors,
}

impl Format {
    /// From the file name's extension.
    pub fn of(path: &Path) -> Result<Self, CliError> {
        match path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).as_deref() {
            Some("npy") => Ok(Format::Npy),
            Some("safetensors") => Ok(Format::Safetensors),
            _ => Err(CliError::input(format!(
                "{}: unknown format; use a .npy or .safetensors file",
                path.display()
            ))),
        }
    }
}

/// Element types the CLI reads and writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DType {
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

/// An update read from a file, with the dtype of each tensor.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The values.
    pub update: ModelUpdate,
    /// One per tensor (one for a vector).
    pub dtypes: Vec<DType>,
}

/// Largest update file read (a 10^8-value float64 model is 800 MB).
const MAX_FILE_BYTES: u64 = 1 << 30;

fn read_file(path: &Path) -> Result<Vec<u8>, CliError> {
    let meta =
        std::fs::metadata(path).map_err(|e| CliError::input(format!("{}: {e}", path.display())))?;
    if meta.len() > MAX_FILE_BYTES {
        return Err(CliError::input(format!(
            "{}: {} bytes is more than the {MAX_FILE_BYTES} this tool reads",
            path.display(),
            meta.len()
        )));
    }
    std::fs::read(path).map_err(|e| CliError::input(format!("{}: {e}", path.display())))
}

/// Reads an update file.
pub fn read(path: &Path) -> Result<Loaded, CliError> {
    let bytes = read_file(path)?;
    let bad = |e: String| CliError::input(format!("{}: {e}", path.display()));
    match Format::of(path)? {
        Format::Npy => {
            let (values, dtype) = match ArrayD::<f64>::read_npy(bytes.as_slice()) {
                Ok(a) => (a, DType::F64),
                Err(ReadNpyError::WrongDescriptor(_)) => {
                    match ArrayD::<f32>::read_npy(bytes.as_slice()) {
                        Ok(a) => (a.mapv(f64::from), DType::F32),
                        Err(ReadNpyError::WrongDescriptor(d)) => {
                            return Err(bad(format!(
                                "dtype {d:?} is not supported; use float32 or float64"
                            )))
                        }
                        Err(e) => return Err(bad(e.to_string())),
                    }
                }
                Err(e) => return Err(bad(e.to_string())),
            };
            let update = if values.ndim() == 1 {
                ModelUpdate::Vector(values.into_dimensionality().map_err(|e| bad(e.to_string()))?)
            } else {
                ModelUpdate::Tensors(vec![Tensor { name: NPY_TENSOR.into(), values }])
            };
            Ok(Loaded { update, dtypes: vec![dtype] })
        }
        Format::Safetensors => {
            let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
            let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
            names.sort();
            if names.is_empty() {
                return Err(bad("the file holds no tensors".into()));
            }
            let mut tensors = Vec::with_capacity(names.len());
            let mut dtypes = Vec::with_capacity(names.len());
            for name in names {
                let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
                let (values, dtype): (Vec<f64>, DType) = match view.dtype() {
                    Dtype::F32 => (
                        view.data()
                            .chunks_exact(4)
                            .map(|c| f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])))
                            .collect(),
                        DType::F32,
                    ),
                    Dtype::F64 => (
                        view.data()
                            .chunks_exact(8)
                            .map(|c| {
                                f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]])
                            })
                            .collect(),
                        DType::F64,
                    ),
                    other => {
                        return Err(bad(format!(
                            "tensor `{name}` has dtype {other:?}; use F32 or F64"
                        )))
                    }
                };
                let values = ArrayD::from_shape_vec(IxDyn(view.shape()), values)
                    .map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
                tensors.push(Tensor { name, values });
                dtypes.push(dtype);
            }
            Ok(Loaded { update: ModelUpdate::Tensors(tensors), dtypes })
        }
    }
}

/// Writes `update` to `path` (format from the extension), tensor `i` as `dtypes[i]` (the
/// last dtype repeats).
pub fn write(path: &Path, update: &ModelUpdate, dtypes: &[DType]) -> Result<(), CliError> {
    let dtype = |i: usize| dtypes.get(i).or(dtypes.last()).copied().unwrap_or(DType::F32);
    let bad = |e: String| CliError::input(format!("{}: {e}", path.display()));
    let bytes = match Format::of(path)? {
        Format::Npy => {
            let values: ArrayD<f64> = match update {
                ModelUpdate::Vector(v) => v.clone().into_dyn(),
                ModelUpdate::Tensors(ts) if ts.len() == 1 => ts[0].values.clone(),
                ModelUpdate::Tensors(ts) => {
                    return Err(bad(format!(
                        "{} named tensors do not fit one .npy array; write a .safetensors file",
                        ts.len()
                    )))
                }
            };
            let mut out = Vec::new();
            let written = match dtype(0) {
                DType::F64 => values.write_npy(&mut out),
                DType::F32 => values.mapv(|v| v as f32).write_npy(&mut out),
            };
            written.map_err(|e| bad(e.to_string()))?;
            out
        }
        Format::Safetensors => {
            let tensors: Vec<(String, &ArrayD<f64>)> = match update {
                ModelUpdate::Vector(v) => {
                    return write_safetensors(
                        path,
                        &[(NPY_TENSOR.to_owned(), v.clone().into_dyn())],
                        &dtype,
                    )
                }
                ModelUpdate::Tensors(ts) => {
                    ts.iter().map(|t| (t.name.clone(), &t.values)).collect()
                }
            };
            let owned: Vec<(String, ArrayD<f64>)> =
                tensors.into_iter().map(|(n, v)| (n, v.clone())).collect();
            return write_safetensors(path, &owned, &dtype);
        }
    };
    std::fs::write(path, bytes).map_err(|e| bad(e.to_string()))
}

fn write_safetensors(
    path: &Path,
    tensors: &[(String, ArrayD<f64>)],
    dtype: &dyn Fn(usize) -> DType,
) -> Result<(), CliError> {
    let bad = |e: String| CliError::input(format!("{}: {e}", path.display()));
    let data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .enumerate()
        .map(|(i, (name, v))| {
            let (dt, bytes) = match dtype(i) {
                DType::F32 => {
                    (Dtype::F32, v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
                }
                DType::F64 => (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect()),
            };
            (name.clone(), dt, v.shape().to_vec(), bytes)
        })
        .collect();
    let views = data
        .iter()
        .map(|(name, dt, shape, bytes)| {
            TensorView::new(*dt, shape.clone(), bytes).map(|v| (name.clone(), v))
        })
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad(e.to_string()))?;
    let bytes = safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))?;
    std::fs::write(path, bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary bytes, and valid files with bytes flipped or cut, never panic the
        /// readers: they decode or give an input error.
        #[test]
        fn readers_survive_arbitrary_and_mutated_bytes(
            noise in proptest::collection::vec(any::<u8>(), 0..512),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let u = ModelUpdate::Tensors(vec![Tensor {
                name: "t".into(),
                values: ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5; 6]).unwrap(),
            }]);
            for name in ["x.npy", "x.safetensors"] {
                let p = dir.path().join(name);
                write(&p, &u, &[DType::F32]).unwrap();
                let mut valid = std::fs::read(&p).unwrap();
                for (i, b) in &flips {
                    let at = i.index(valid.len());
                    valid[at] ^= b;
                }
                let cut_at = cut.index(valid.len() + 1);
                for bytes in [noise.clone(), valid.clone(), valid[..cut_at].to_vec()] {
                    std::fs::write(&p, &bytes).unwrap();
                    if let Err(e) = read(&p) {
                        prop_assert_eq!(e.exit, crate::output::Exit::Input);
                    }
                }
            }
        }
    }

    #[test]
    fn files_round_trip_with_names_shapes_and_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let u = ModelUpdate::Tensors(vec![
            Tensor {
                name: "b.bias".into(),
                values: ArrayD::from_shape_vec(IxDyn(&[3]), vec![0.5, -0.25, 1.0]).unwrap(),
            },
            Tensor {
                name: "a.weight".into(),
                values: ArrayD::from_shape_vec(IxDyn(&[2, 2]), vec![0.1, 0.2, 0.3, 0.4]).unwrap(),
            },
        ]);
        let p = dir.path().join("m.safetensors");
        write(&p, &u, &[DType::F64, DType::F32]).unwrap();
        let back = read(&p).unwrap();
        // Sorted by name: a.weight (written as F32), then b.bias (F64).
        assert_eq!(back.dtypes, vec![DType::F32, DType::F64]);
        let ModelUpdate::Tensors(ts) = &back.update else { panic!() };
        assert_eq!(ts[0].name, "a.weight");
        assert_eq!(ts[0].values.shape(), &[2, 2]);
        assert!((ts[0].values[[1, 1]] - 0.4).abs() < 1e-7);
        assert_eq!(ts[1].values.as_slice().unwrap(), &[0.5, -0.25, 1.0]);

        for (dt, shape) in [(DType::F32, vec![5]), (DType::F64, vec![2, 3])] {
            let n: usize = shape.iter().product();
            let values =
                ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| i as f64 / 8.0).collect())
                    .unwrap();
            let u = if shape.len() == 1 {
                ModelUpdate::Vector(values.clone().into_dimensionality().unwrap())
            } else {
                ModelUpdate::Tensors(vec![Tensor { name: NPY_TENSOR.into(), values }])
            };
            let p = dir.path().join("v.npy");
            write(&p, &u, &[dt]).unwrap();
            let back = read(&p).unwrap();
            assert_eq!(back.dtypes, vec![dt]);
            assert_eq!(back.update, u);
        }
    }

    #[test]
    fn unusable_files_are_input_errors() {
        let dir = tempfile::tempdir().unwrap();
        for (name, bytes) in [
            ("a.npy", b"not numpy".to_vec()),
            ("a.safetensors", vec![0xff; 16]),
            ("a.txt", vec![]),
            ("b.safetensors", {
                let mut v = 2u64.to_le_bytes().to_vec();
                v.extend_from_slice(b"{}");
                v
            }),
        ] {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            let e = read(&p).unwrap_err();
            assert_eq!(e.exit, crate::output::Exit::Input, "{name}: {}", e.message);
        }
        // int64 .npy is refused by name.
        let p = dir.path().join("i.npy");
        ndarray::arr1(&[1i64, 2]).write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        assert!(read(&p).unwrap_err().message.contains("float32 or float64"));
    }
}
