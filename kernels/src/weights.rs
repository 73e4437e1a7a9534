//! Weights read at start from a safetensors checkpoint, for an object
//! compiled with `nnc compile -o --weights-external` (its header calls
//! [`nnc_load_weights`] with a table of the state's slots): the state
//! buffer as compiled code reads it, each tensor converted from the
//! file's dtype to the 4-byte word the code holds (f32 bits, or an `i32`
//! for integer and boolean values), so a program can take new weights of
//! the same model without recompiling.

use std::cell::RefCell;
use std::ffi::{c_char, CStr, CString};

/// One tensor of the state, as the header's table lists it.
#[repr(C)]
pub struct TensorSlot {
    /// Its name in the checkpoint (NUL-terminated).
    pub name: *const c_char,
    /// How the code holds an element: 0 for f32 bits, 1 for an `i32`.
    pub kind: i32,
    /// Byte offset of its first element in the state.
    pub offset: usize,
    /// Elements.
    pub numel: usize,
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

const ALIGN: usize = 64;

fn layout(bytes: usize) -> Option<std::alloc::Layout> {
    std::alloc::Layout::from_size_align(bytes.max(1), ALIGN).ok()
}

/// Why the last [`nnc_load_weights`] of this thread returned null.
#[no_mangle]
pub extern "C" fn nnc_last_error() -> *const c_char {
    LAST_ERROR.with(|e| e.borrow().as_ptr())
}

/// Reads the checkpoint at `path` into a new, 64-byte aligned state of
/// `bytes` bytes laid out as `slots` (`n` of them) say. Null on failure,
/// with the reason in [`nnc_last_error`]: an unreadable or malformed
/// file (with its byte offset), a tensor the file lacks, or one of
/// another size.
///
/// # Safety
/// `path` is null (an error) or a NUL-terminated string; `slots` points to `n` slots whose
/// names are NUL-terminated and whose elements fit in `bytes`.
#[no_mangle]
pub unsafe extern "C" fn nnc_load_weights(
    path: *const c_char,
    slots: *const TensorSlot,
    n: usize,
    bytes: usize,
) -> *mut u8 {
    // SAFETY: forwarded contract.
    let result = std::panic::catch_unwind(|| unsafe { load(path, slots, n, bytes) });
    let message = match result {
        Ok(Ok(state)) => return state,
        Ok(Err(message)) => message,
        Err(_) => "internal error while reading weights".to_string(),
    };
    LAST_ERROR.with(|e| {
        *e.borrow_mut() = CString::new(message.replace('\0', " ")).unwrap_or_default();
    });
    std::ptr::null_mut()
}

/// Frees a state from [`nnc_load_weights`] (null is ignored).
///
/// # Safety
/// `state` came from [`nnc_load_weights`] with these `bytes`, once.
#[no_mangle]
pub unsafe extern "C" fn nnc_free_weights(state: *mut u8, bytes: usize) {
    if let (false, Some(layout)) = (state.is_null(), layout(bytes)) {
        // SAFETY: allocated in `load` with this layout.
        unsafe { std::alloc::dealloc(state, layout) };
    }
}

/// # Safety
/// As [`nnc_load_weights`].
unsafe fn load(
    path: *const c_char,
    slots: *const TensorSlot,
    n: usize,
    bytes: usize,
) -> Result<*mut u8, String> {
    if path.is_null() {
        return Err("no weights file given (the object reads its weights at start)".into());
    }
    // SAFETY: by the contract.
    let path = unsafe { CStr::from_ptr(path) }
        .to_string_lossy()
        .into_owned();
    let file = std::fs::read(&path).map_err(|e| format!("{path}: {e}"))?;
    let tensors = parse(&file).map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: by the contract.
    let slots = if n == 0 {
        &[][..]
    } else {
        unsafe { std::slice::from_raw_parts(slots, n) }
    };
    let layout = layout(bytes).ok_or_else(|| format!("{path}: a state of {bytes} bytes"))?;
    // SAFETY: a non-zero size.
    let state = unsafe { std::alloc::alloc_zeroed(layout) };
    if state.is_null() {
        return Err(format!(
            "{path}: out of memory for {bytes} bytes of weights"
        ));
    }
    for slot in slots {
        // SAFETY: by the contract.
        let name = unsafe { CStr::from_ptr(slot.name) }.to_string_lossy();
        let fill = || -> Result<(), String> {
            let t = tensors
                .iter()
                .find(|t| t.name == name)
                .ok_or_else(|| format!("{path}: the model's tensor `{name}` is not in the file"))?;
            if t.numel != slot.numel {
                return Err(format!(
                    "{path}: tensor `{name}` has {} elements, the model's has {}",
                    t.numel, slot.numel
                ));
            }
            if slot.offset + 4 * slot.numel > bytes {
                return Err(format!(
                    "internal error: slot `{name}` is outside the state"
                ));
            }
            let data = &file[t.start..t.end];
            for i in 0..t.numel {
                let v = t.value(data, i);
                let word = if slot.kind == 0 {
                    (v as f32).to_bits()
                } else {
                    (v as i32) as u32
                };
                // SAFETY: in bounds (checked above), 4-byte aligned offsets.
                unsafe {
                    (state.add(slot.offset + 4 * i) as *mut u32).write_unaligned(word);
                }
            }
            Ok(())
        };
        if let Err(e) = fill() {
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(state, layout) };
            return Err(e);
        }
    }
    Ok(state)
}

/// A tensor of the file: its name, dtype, element count and data range.
struct Entry {
    name: String,
    dtype: String,
    numel: usize,
    start: usize,
    end: usize,
}

impl Entry {
    /// Element `i` as a number.
    fn value(&self, data: &[u8], i: usize) -> f64 {
        let at = |w: usize| &data[i * w..(i + 1) * w];
        match self.dtype.as_str() {
            "F32" => f64::from(f32::from_le_bytes(at(4).try_into().unwrap_or_default())),
            "F64" => f64::from_le_bytes(at(8).try_into().unwrap_or_default()),
            "I32" => f64::from(i32::from_le_bytes(at(4).try_into().unwrap_or_default())),
            "I8" => f64::from(at(1)[0] as i8),
            _ => f64::from(at(1)[0]),
        }
    }
}

/// The tensors of a safetensors file, each range checked against it.
fn parse(file: &[u8]) -> Result<Vec<Entry>, String> {
    let head = file
        .get(..8)
        .ok_or("byte 0: shorter than the 8-byte header length of a safetensors file")?;
    let len = u64::from_le_bytes(head.try_into().map_err(|_| "byte 0: truncated")?) as usize;
    let json = file.get(8..8usize.saturating_add(len)).ok_or(format!(
        "byte 8: the header says {len} bytes of JSON, the file is shorter"
    ))?;
    let header: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(json)
        .map_err(|e| format!("byte 8: the header is not a JSON object: {e}"))?;
    let base = 8 + len;
    let mut out = Vec::new();
    for (name, info) in header {
        if name == "__metadata__" {
            continue;
        }
        let bad = || format!("byte 8: tensor `{name}` has a malformed entry");
        let dtype = info["dtype"].as_str().ok_or_else(bad)?.to_string();
        let width = match dtype.as_str() {
            "F32" | "I32" => 4,
            "F64" => 8,
            "I8" | "U8" | "BOOL" => 1,
            other => {
                return Err(format!(
                    "tensor `{name}` has dtype {other}, which no model holds"
                ))
            }
        };
        let numel = info["shape"]
            .as_array()
            .ok_or_else(bad)?
            .iter()
            .map(|d| d.as_u64().map(|d| d as usize))
            .product::<Option<usize>>()
            .ok_or_else(bad)?;
        let offsets = info["data_offsets"].as_array().ok_or_else(bad)?;
        let (Some(a), Some(b)) = (
            offsets.first().and_then(|v| v.as_u64()),
            offsets.get(1).and_then(|v| v.as_u64()),
        ) else {
            return Err(bad());
        };
        let (start, end) = (base + a as usize, base + b as usize);
        if end < start || end > file.len() || end - start != numel * width {
            return Err(format!(
                "byte {start}: tensor `{name}`'s data does not fit the file or its shape"
            ));
        }
        out.push(Entry {
            name,
            dtype,
            numel,
            start,
            end,
        });
    }
    Ok(out)
}
