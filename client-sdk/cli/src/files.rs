//! Model-update files: NumPy `.npy` (one array) and safetensors (named tensors).
//!
//! A 1-D `.npy` array is a flat vector (a `dimension` round); an array of any other rank is
//! one tensor named `array`. A safetensors file is its tensors in name order. Float values are
//! `float16`, `bfloat16` (safetensors), `float32` or `float64`; half types are widened to
//! `float32` for encryption. **Integer tensors** (step counters, masks) are never averaged:
//! they are refused, naming the tensor, unless the caller passes them through — then they are
//! left out of the round and `fetch --like` copies them unchanged from the reference file.
//! The mean is written back in the dtypes of a reference file (`--like`) or of `--dtype`.

use crate::output::CliError;
use cryptflow_client::{ModelUpdate, OutputType, Tensor, TensorValues};
use half::{bf16, f16};
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

/// Float types the CLI reads and writes.
#[derive(Copy, Clone, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum DType {
    /// IEEE binary16.
    F16,
    /// bfloat16 (safetensors only).
    Bf16,
    /// 32-bit float.
    F32,
    /// 64-bit float.
    F64,
}

impl DType {
    /// For the error bound of a mean written in this type.
    pub fn output(self) -> OutputType {
        match self {
            DType::F16 => OutputType::F16,
            DType::Bf16 => OutputType::Bf16,
            DType::F32 => OutputType::F32,
            DType::F64 => OutputType::F64,
        }
    }
}

/// What to do with integer tensors.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Integers {
    /// Refuse the file, naming the tensor.
    Refuse,
    /// Leave them out of the round.
    PassThrough,
}

/// An integer tensor left out of the round, as read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Passthrough {
    /// Name.
    pub name: String,
    /// safetensors dtype.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw little-endian data.
    pub data: Vec<u8>,
}

/// An update read from a file, with the dtype of each tensor and the integer tensors passed
/// through.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The float values.
    pub update: ModelUpdate,
    /// One per float tensor (one for a vector).
    pub dtypes: Vec<DType>,
    /// Integer tensors left out.
    pub passthrough: Vec<Passthrough>,
}

/// Largest update file read (a 10^8-value float64 model is 800 MB).
const MAX_FILE_BYTES: u64 = 4 << 30;

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
pub fn read(path: &Path, integers: Integers) -> Result<Loaded, CliError> {
    let bytes = read_file(path)?;
    let bad = |e: String| CliError::input(format!("{}: {e}", path.display()));
    match Format::of(path)? {
        Format::Npy => {
            let (values, dtype) = read_npy(&bytes).map_err(bad)?;
            let update = if values.shape().len() == 1 {
                ModelUpdate::Vector(values)
            } else {
                ModelUpdate::Tensors(vec![Tensor { name: NPY_TENSOR.into(), values }])
            };
            Ok(Loaded { update, dtypes: vec![dtype], passthrough: Vec::new() })
        }
        Format::Safetensors => {
            let st = SafeTensors::deserialize(&bytes).map_err(|e| bad(e.to_string()))?;
            let mut names: Vec<String> = st.names().into_iter().map(String::from).collect();
            names.sort();
            let mut tensors = Vec::new();
            let mut dtypes = Vec::new();
            let mut passthrough = Vec::new();
            for name in names {
                let view = st.tensor(&name).map_err(|e| bad(e.to_string()))?;
                let shape = view.shape().to_vec();
                let data = view.data();
                let (values, dtype) = match view.dtype() {
                    Dtype::F64 => (
                        TensorValues::F64(
                            array(&shape, data.chunks_exact(8).map(le_f64)).map_err(bad)?,
                        ),
                        DType::F64,
                    ),
                    Dtype::F32 => (
                        TensorValues::F32(
                            array(&shape, data.chunks_exact(4).map(le_f32)).map_err(bad)?,
                        ),
                        DType::F32,
                    ),
                    Dtype::F16 => (
                        TensorValues::F32(
                            array(
                                &shape,
                                data.chunks_exact(2)
                                    .map(|c| f16::from_le_bytes([c[0], c[1]]).to_f32()),
                            )
                            .map_err(bad)?,
                        ),
                        DType::F16,
                    ),
                    Dtype::BF16 => (
                        TensorValues::F32(
                            array(
                                &shape,
                                data.chunks_exact(2)
                                    .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32()),
                            )
                            .map_err(bad)?,
                        ),
                        DType::Bf16,
                    ),
                    other if is_integer(other) => {
                        if integers == Integers::Refuse {
                            return Err(bad(format!(
                                "tensor `{name}` holds integers ({other:?}); integer tensors are not averaged — pass \
                                 --pass-integers to leave them out of the round (fetch --like copies them back)"
                            )));
                        }
                        passthrough.push(Passthrough {
                            name,
                            dtype: other,
                            shape,
                            data: data.to_vec(),
                        });
                        continue;
                    }
                    other => {
                        return Err(bad(format!(
                            "tensor `{name}` has dtype {other:?}; use F16, BF16, F32 or F64"
                        )))
                    }
                };
                tensors.push(Tensor { name, values });
                dtypes.push(dtype);
            }
            if tensors.is_empty() {
                return Err(bad("the file holds no float tensors".into()));
            }
            Ok(Loaded { update: ModelUpdate::Tensors(tensors), dtypes, passthrough })
        }
    }
}

fn is_integer(d: Dtype) -> bool {
    matches!(
        d,
        Dtype::BOOL
            | Dtype::U8
            | Dtype::I8
            | Dtype::I16
            | Dtype::U16
            | Dtype::I32
            | Dtype::U32
            | Dtype::I64
            | Dtype::U64
    )
}

fn le_f64(c: &[u8]) -> f64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(c);
    f64::from_le_bytes(b)
}

fn le_f32(c: &[u8]) -> f32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(c);
    f32::from_le_bytes(b)
}

fn array<T>(shape: &[usize], values: impl Iterator<Item = T>) -> Result<ArrayD<T>, String> {
    ArrayD::from_shape_vec(IxDyn(shape), values.collect()).map_err(|e| e.to_string())
}

/// Reads a `.npy` of float64, float32 or float16 (any byte order, C or Fortran order).
fn read_npy(bytes: &[u8]) -> Result<(TensorValues, DType), String> {
    match ArrayD::<f64>::read_npy(bytes) {
        Ok(a) => return Ok((TensorValues::F64(a), DType::F64)),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    match ArrayD::<f32>::read_npy(bytes) {
        Ok(a) => return Ok((TensorValues::F32(a), DType::F32)),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(e.to_string()),
    }
    // float16: ndarray-npy has no half type; read the same layout as unsigned 16-bit words
    // after checking the descriptor, then convert.
    let header = npy_header(bytes)?;
    let little = match header.descr.as_str() {
        "<f2" | "|f2" => true,
        ">f2" => false,
        d => return Err(format!("dtype {d:?} is not supported; use float16, float32 or float64")),
    };
    let n: usize = header.shape.iter().product();
    let data = bytes.get(header.data_offset..).ok_or("truncated")?;
    if data.len() != 2 * n {
        return Err(format!("{} data bytes for {n} float16 values", data.len()));
    }
    let values = data.chunks_exact(2).map(|c| {
        let w = if little { [c[0], c[1]] } else { [c[1], c[0]] };
        f16::from_le_bytes(w).to_f32()
    });
    let a = if header.fortran_order {
        let rev: Vec<usize> = header.shape.iter().rev().copied().collect();
        array(&rev, values)?.reversed_axes().as_standard_layout().into_owned()
    } else {
        array(&header.shape, values)?
    };
    Ok((TensorValues::F32(a), DType::F16))
}

struct NpyHeader {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
    data_offset: usize,
}

/// The header of a `.npy` file (format versions 1–3).
fn npy_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != b"\x93NUMPY" {
        return Err("not a .npy file".into());
    }
    let (len, start): (usize, usize) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => {
            (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12)
        }
        v => return Err(format!("unknown .npy version {v}")),
    };
    let text = bytes.get(start..start.saturating_add(len)).ok_or("truncated header")?;
    let text = std::str::from_utf8(text).map_err(|_| "header is not text")?;
    let field = |key: &str| -> Result<&str, String> {
        let at = text.find(&format!("'{key}'")).ok_or(format!("no {key} in the header"))?;
        let rest = &text[at + key.len() + 2..];
        Ok(rest.trim_start().trim_start_matches(':').trim_start())
    };
    let descr = field("descr")?;
    let descr =
        descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("bad descr")?.to_owned();
    let fortran_order = field("fortran_order")?.starts_with("True");
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("bad shape")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<usize>().map_err(|_| format!("bad shape entry {s:?}")))
        .collect::<Result<Vec<_>, _>>()?;
    shape.iter().try_fold(1usize, |a, &s| a.checked_mul(s)).ok_or("shape overflows")?;
    Ok(NpyHeader { descr, fortran_order, shape, data_offset: start + len })
}

fn npy_f16(values: &ArrayD<f64>) -> Vec<u8> {
    let shape: Vec<String> = values.shape().iter().map(|s| s.to_string()).collect();
    let shape = if shape.len() == 1 {
        format!("({},)", shape[0])
    } else {
        format!("({})", shape.join(", "))
    };
    let mut header = format!("{{'descr': '<f2', 'fortran_order': False, 'shape': {shape}, }}");
    // Pad so that the data starts on a multiple of 64 bytes, ending with a newline.
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for v in values.iter() {
        out.extend_from_slice(&f16::from_f64(*v).to_le_bytes());
    }
    out
}

/// Writes `update` to `path` (format from the extension), float tensor `i` as `dtypes[i]`
/// (the last dtype repeats), integer `passthrough` tensors unchanged. Files are created with
/// mode 0600: a mean is the consortium's result, not for every local user.
pub fn write(
    path: &Path,
    update: &ModelUpdate,
    dtypes: &[DType],
    passthrough: &[Passthrough],
) -> Result<(), CliError> {
    let dtype = |i: usize| dtypes.get(i).or(dtypes.last()).copied().unwrap_or(DType::F32);
    let bad = |e: String| CliError::input(format!("{}: {e}", path.display()));
    let bytes = match Format::of(path)? {
        Format::Npy => {
            let values: ArrayD<f64> = match update {
                ModelUpdate::Vector(v) => v.to_f64(),
                ModelUpdate::Tensors(ts) if ts.len() == 1 && passthrough.is_empty() => {
                    ts[0].values.to_f64()
                }
                ModelUpdate::Tensors(ts) => {
                    return Err(bad(format!(
                        "{} tensors do not fit one .npy array; write a .safetensors file",
                        ts.len() + passthrough.len()
                    )))
                }
            };
            let mut out = Vec::new();
            match dtype(0) {
                DType::F64 => values.write_npy(&mut out).map_err(|e| bad(e.to_string()))?,
                DType::F32 => {
                    values.mapv(|v| v as f32).write_npy(&mut out).map_err(|e| bad(e.to_string()))?
                }
                DType::F16 => out = npy_f16(&values),
                DType::Bf16 => {
                    return Err(bad("bfloat16 has no .npy dtype; write a .safetensors file".into()))
                }
            }
            out
        }
        Format::Safetensors => {
            let tensors: Vec<(String, ArrayD<f64>)> = match update {
                ModelUpdate::Vector(v) => vec![(NPY_TENSOR.to_owned(), v.to_f64())],
                ModelUpdate::Tensors(ts) => {
                    ts.iter().map(|t| (t.name.clone(), t.values.to_f64())).collect()
                }
            };
            let mut data: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = tensors
                .iter()
                .enumerate()
                .map(|(i, (name, v))| {
                    let (dt, bytes) = match dtype(i) {
                        DType::F64 => {
                            (Dtype::F64, v.iter().flat_map(|x| x.to_le_bytes()).collect())
                        }
                        DType::F32 => {
                            (Dtype::F32, v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect())
                        }
                        DType::F16 => (
                            Dtype::F16,
                            v.iter().flat_map(|x| f16::from_f64(*x).to_le_bytes()).collect(),
                        ),
                        DType::Bf16 => (
                            Dtype::BF16,
                            v.iter().flat_map(|x| bf16::from_f64(*x).to_le_bytes()).collect(),
                        ),
                    };
                    (name.clone(), dt, v.shape().to_vec(), bytes)
                })
                .collect();
            data.extend(
                passthrough
                    .iter()
                    .map(|p| (p.name.clone(), p.dtype, p.shape.clone(), p.data.clone())),
            );
            let views = data
                .iter()
                .map(|(name, dt, shape, bytes)| {
                    TensorView::new(*dt, shape.clone(), bytes).map(|v| (name.clone(), v))
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| bad(e.to_string()))?;
            safetensors::serialize(views, None).map_err(|e| bad(e.to_string()))?
        }
    };
    crate::output::write_private_replace(path, &bytes).map_err(|e| bad(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn tensors() -> ModelUpdate {
        ModelUpdate::Tensors(vec![Tensor {
            name: "t".into(),
            values: TensorValues::F64(
                ArrayD::from_shape_vec(IxDyn(&[2, 3]), vec![0.5; 6]).unwrap(),
            ),
        }])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Arbitrary bytes, and valid files with bytes flipped or cut, never panic the
        /// readers: they decode or give an input error.
        #[test]
        fn readers_survive_arbitrary_and_mutated_bytes(
            noise in proptest::collection::vec(any::<u8>(), 0..512),
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..6),
            cut in any::<prop::sample::Index>(),
            half in any::<bool>(),
        ) {
            let dir = tempfile::tempdir().unwrap();
            let dtype = if half { DType::F16 } else { DType::F32 };
            for name in ["x.npy", "x.safetensors"] {
                let p = dir.path().join(name);
                write(&p, &tensors(), &[dtype], &[]).unwrap();
                let mut valid = std::fs::read(&p).unwrap();
                for (i, b) in &flips {
                    let at = i.index(valid.len());
                    valid[at] ^= b;
                }
                let cut_at = cut.index(valid.len() + 1);
                for bytes in [noise.clone(), valid.clone(), valid[..cut_at].to_vec()] {
                    std::fs::remove_file(&p).ok();
                    std::fs::write(&p, &bytes).unwrap();
                    if let Err(e) = read(&p, Integers::Refuse) {
                        prop_assert_eq!(e.exit, crate::output::Exit::Input);
                    }
                }
            }
        }
    }

    #[test]
    fn files_round_trip_with_names_shapes_and_dtypes() {
        let dir = tempfile::tempdir().unwrap();
        let t = |name: &str, shape: &[usize], v: Vec<f64>| Tensor {
            name: name.into(),
            values: TensorValues::F64(ArrayD::from_shape_vec(IxDyn(shape), v).unwrap()),
        };
        let u = ModelUpdate::Tensors(vec![
            t("b.bias", &[3], vec![0.5, -0.25, 1.0]),
            t("a.weight", &[2, 2], vec![0.1, 0.2, 0.3, 0.4]),
            t("c.half", &[2], vec![0.5, 2.0]),
            t("d.brain", &[2], vec![0.5, -4.0]),
        ]);
        let p = dir.path().join("m.safetensors");
        write(&p, &u, &[DType::F64, DType::F32, DType::F16, DType::Bf16], &[]).unwrap();
        let back = read(&p, Integers::Refuse).unwrap();
        // Sorted by name: a.weight (written as F32), b.bias (F64), c.half (F16), d.brain (BF16).
        assert_eq!(back.dtypes, vec![DType::F32, DType::F64, DType::F16, DType::Bf16]);
        let ModelUpdate::Tensors(ts) = &back.update else { panic!() };
        assert_eq!(ts[0].name, "a.weight");
        assert_eq!(ts[0].values.shape(), &[2, 2]);
        assert_eq!(ts[1].values.iter().collect::<Vec<_>>(), vec![0.5, -0.25, 1.0]);
        assert_eq!(ts[2].values.iter().collect::<Vec<_>>(), vec![0.5, 2.0]);
        assert_eq!(ts[3].values.iter().collect::<Vec<_>>(), vec![0.5, -4.0]);
        for dt in [DType::F16, DType::F32, DType::F64] {
            for shape in [vec![5usize], vec![2, 3]] {
                let n: usize = shape.iter().product();
                let values =
                    ArrayD::from_shape_vec(IxDyn(&shape), (0..n).map(|i| i as f64 / 8.0).collect())
                        .unwrap();
                let u = if shape.len() == 1 {
                    ModelUpdate::Vector(TensorValues::F64(values))
                } else {
                    ModelUpdate::Tensors(vec![Tensor {
                        name: NPY_TENSOR.into(),
                        values: TensorValues::F64(values),
                    }])
                };
                let p = dir.path().join(format!("v{dt:?}{}.npy", shape.len()));
                write(&p, &u, &[dt], &[]).unwrap();
                let back = read(&p, Integers::Refuse).unwrap();
                assert_eq!(back.dtypes, vec![dt]);
                assert_eq!(
                    back.update.iter().collect::<Vec<_>>(),
                    u.iter().collect::<Vec<_>>(),
                    "{dt:?} {shape:?}"
                );
            }
        }
    }

    #[test]
    fn integer_tensors_are_refused_by_name_or_passed_through() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("bn.safetensors");
        let steps = 7i64.to_le_bytes().to_vec();
        let w = 0.5f32.to_le_bytes().to_vec();
        let views = vec![
            (
                "bn.num_batches_tracked".to_owned(),
                TensorView::new(Dtype::I64, vec![1], &steps).unwrap(),
            ),
            ("bn.weight".to_owned(), TensorView::new(Dtype::F32, vec![1], &w).unwrap()),
        ];
        std::fs::write(&p, safetensors::serialize(views, None).unwrap()).unwrap();
        let e = read(&p, Integers::Refuse).unwrap_err();
        assert!(e.message.contains("bn.num_batches_tracked"), "{}", e.message);
        let l = read(&p, Integers::PassThrough).unwrap();
        assert_eq!(l.passthrough.len(), 1);
        assert_eq!(l.update.len(), 1);
        let out = dir.path().join("out.safetensors");
        write(&out, &l.update, &l.dtypes, &l.passthrough).unwrap();
        let back = std::fs::read(&out).unwrap();
        let st = SafeTensors::deserialize(&back).unwrap();
        assert_eq!(st.tensor("bn.num_batches_tracked").unwrap().data(), &steps[..]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
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
            let e = read(&p, Integers::Refuse).unwrap_err();
            assert_eq!(e.exit, crate::output::Exit::Input, "{name}: {}", e.message);
        }
        let p = dir.path().join("i.npy");
        ndarray::arr1(&[1i64, 2]).write_npy(std::fs::File::create(&p).unwrap()).unwrap();
        assert!(read(&p, Integers::Refuse)
            .unwrap_err()
            .message
            .contains("float16, float32 or float64"));
    }
}
