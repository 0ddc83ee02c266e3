//! The libjpeg calls, kept in one place. libjpeg reports errors through a callback that must
//! not return; ours unwinds (mozjpeg-sys builds the C code so unwinding through it is sound)
//! with the message, which `guarded` catches and turns into an `Err`. Warnings (corrupt data
//! that libjpeg would paper over) are errors too: we never invent pixels or coefficients.

use std::ffi::CStr;
use std::os::raw::{c_int, c_uint, c_ulong};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};

use mozjpeg_sys::*;

/// The unwinding payload carrying libjpeg's message.
struct LibjpegFailure(String);

fn message(cinfo: &jpeg_common_struct) -> String {
    // SAFETY: libjpeg sets `err` before any call can fail, and the message table is a static
    // array of C strings indexed by codes below `last_jpeg_message`.
    unsafe {
        let Some(err) = cinfo.err.as_ref() else {
            return "libjpeg failed".into();
        };
        let code = err.msg_code;
        if code > 0 && code <= err.last_jpeg_message && !err.jpeg_message_table.is_null() {
            let text = *err.jpeg_message_table.offset(code as isize);
            if !text.is_null() {
                return CStr::from_ptr(text).to_string_lossy().into_owned();
            }
        }
        format!("libjpeg error {code}")
    }
}

unsafe extern "C-unwind" fn error_exit(cinfo: &mut jpeg_common_struct) {
    // resume_unwind skips the panic hook: no "thread panicked" noise on stderr.
    resume_unwind(Box::new(LibjpegFailure(message(cinfo))));
}

unsafe extern "C-unwind" fn emit_message(cinfo: &mut jpeg_common_struct, level: c_int) {
    if level < 0 {
        resume_unwind(Box::new(LibjpegFailure(message(cinfo))));
    }
}

unsafe extern "C-unwind" fn output_message(_cinfo: &mut jpeg_common_struct) {}

fn error_manager() -> Box<jpeg_error_mgr> {
    // SAFETY: jpeg_error_mgr is a plain C struct for which all-zero is a valid starting point;
    // jpeg_std_error fills it in before we override three callbacks.
    unsafe {
        let mut err: Box<jpeg_error_mgr> = Box::new(std::mem::zeroed());
        jpeg_std_error(&mut err);
        err.error_exit = Some(error_exit);
        err.emit_message = Some(emit_message);
        err.output_message = Some(output_message);
        err
    }
}

/// Runs `f`, turning a libjpeg failure into `Err`.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T, String> {
    catch_unwind(AssertUnwindSafe(f)).map_err(|payload| {
        match payload.downcast::<LibjpegFailure>() {
            Ok(failure) => failure.0,
            Err(other) => resume_unwind(other),
        }
    })
}

/// A compressor and its output buffer, destroyed together.
struct Compressor {
    cinfo: Box<jpeg_compress_struct>,
    _err: Box<jpeg_error_mgr>,
    out: *mut u8,
    out_len: c_ulong,
    finished: bool,
}

impl Compressor {
    fn new() -> Result<Self, String> {
        let mut err = error_manager();
        // SAFETY: zeroed then initialised by jpeg_create_compress, as libjpeg documents; the
        // error manager outlives the struct (both are owned here, `cinfo` dropped first).
        let mut cinfo: Box<jpeg_compress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        guarded(|| unsafe { jpeg_create_compress(&mut *cinfo) })?;
        Ok(Self {
            cinfo,
            _err: err,
            out: std::ptr::null_mut(),
            out_len: 0,
            finished: false,
        })
    }

    /// libjpeg-turbo's defaults (not mozjpeg's scan optimiser): the standard progressive
    /// script. Must precede jpeg_set_defaults and jpeg_copy_critical_parameters.
    fn use_libjpeg_profile(&mut self) {
        // SAFETY: a created compressor; the parameter is one mozjpeg defines.
        unsafe {
            jpeg_c_set_int_param(
                &mut self.cinfo,
                J_INT_PARAM::JINT_COMPRESS_PROFILE,
                JCP_FASTEST as c_int,
            )
        }
    }

    fn memory_destination(&mut self) {
        // SAFETY: `out` and `out_len` live as long as the compressor (boxed fields of self
        // would move; these are plain fields of a struct that is not moved while compressing,
        // as every use takes `&mut self` after construction).
        unsafe { jpeg_mem_dest(&mut self.cinfo, &mut self.out, &mut self.out_len) }
    }

    /// The finished file.
    fn output(&mut self) -> Vec<u8> {
        self.finished = true;
        if self.out.is_null() {
            return Vec::new();
        }
        // SAFETY: after jpeg_finish_compress the memory destination points `out` at a malloc'd
        // buffer of `out_len` bytes that we own.
        unsafe { std::slice::from_raw_parts(self.out, self.out_len as usize).to_vec() }
    }
}

impl Drop for Compressor {
    fn drop(&mut self) {
        // SAFETY: destroying a created compressor is always allowed. The output buffer is
        // ours only once compression finished; after a failure libjpeg may have replaced it
        // (it grows by reallocating), so it is left alone rather than freed twice.
        unsafe {
            jpeg_destroy_compress(&mut self.cinfo);
            if self.finished && !self.out.is_null() {
                libc::free(self.out.cast());
            }
        }
    }
}

struct Decompressor {
    cinfo: Box<jpeg_decompress_struct>,
    _err: Box<jpeg_error_mgr>,
}

impl Decompressor {
    fn new() -> Result<Self, String> {
        let mut err = error_manager();
        // SAFETY: as for the compressor.
        let mut cinfo: Box<jpeg_decompress_struct> = Box::new(unsafe { std::mem::zeroed() });
        cinfo.common.err = &mut *err;
        guarded(|| unsafe { jpeg_create_decompress(&mut *cinfo) })?;
        Ok(Self { cinfo, _err: err })
    }
}

impl Drop for Decompressor {
    fn drop(&mut self) {
        // SAFETY: destroying a created decompressor is always allowed.
        unsafe { jpeg_destroy_decompress(&mut self.cinfo) }
    }
}

/// libjpeg's default progression for YCbCr, with its last scan (the final bit of every luma
/// AC coefficient, most of the file) split into five frequency bands. The early scans are
/// libjpeg's exactly (DC, then luma AC 1-5: a recognisable picture within a tenth of the
/// bytes); the split gives the tail scan boundaries too, so a q above ~0.4 does not have to
/// wait for the whole file, and receivers see it sharpen in more steps.
const fn scan(comps: &[c_int], ss: c_int, se: c_int, ah: c_int, al: c_int) -> jpeg_scan_info {
    let mut component_index = [0; 4];
    let mut i = 0;
    while i < comps.len() {
        component_index[i] = comps[i];
        i += 1;
    }
    jpeg_scan_info {
        comps_in_scan: comps.len() as c_int,
        component_index,
        Ss: ss,
        Se: se,
        Ah: ah,
        Al: al,
    }
}

static YCC_SCRIPT: [jpeg_scan_info; 14] = [
    scan(&[0, 1, 2], 0, 0, 0, 1),
    scan(&[0], 1, 5, 0, 2),
    scan(&[2], 1, 63, 0, 1),
    scan(&[1], 1, 63, 0, 1),
    scan(&[0], 6, 63, 0, 2),
    scan(&[0], 1, 63, 2, 1),
    scan(&[0, 1, 2], 0, 0, 1, 0),
    scan(&[2], 1, 63, 1, 0),
    scan(&[1], 1, 63, 1, 0),
    // libjpeg ends with one scan of luma AC 1-63; five bands instead.
    scan(&[0], 1, 5, 1, 0),
    scan(&[0], 6, 9, 1, 0),
    scan(&[0], 10, 14, 1, 0),
    scan(&[0], 15, 20, 1, 0),
    scan(&[0], 21, 63, 1, 0),
];

/// Sets the scan script: ours for three-component YCbCr, libjpeg's default otherwise.
///
/// # Safety
/// `cinfo` has its parameters set (jpeg_set_defaults or jpeg_copy_critical_parameters).
unsafe fn set_progression(cinfo: &mut jpeg_compress_struct) {
    unsafe { jpeg_simple_progression(cinfo) };
    if cinfo.num_components == 3 && cinfo.jpeg_color_space == J_COLOR_SPACE::JCS_YCbCr {
        // A static: libjpeg keeps the pointer until compression ends.
        cinfo.scan_info = YCC_SCRIPT.as_ptr();
        cinfo.num_scans = YCC_SCRIPT.len() as c_int;
    }
}

const APP0: c_int = 0xE0;
const APP14: c_int = 0xEE;
const COM: c_int = 0xFE;

/// `jpegtran -copy all -progressive`: the same coefficients in a progressive file.
pub fn baseline_to_progressive(input: &[u8], max_pixels: u64) -> Result<Vec<u8>, String> {
    let mut src = Decompressor::new()?;
    let mut dst = Compressor::new()?;
    guarded(|| {
        // SAFETY: `input` outlives the decompression (it is borrowed for this whole call);
        // the structs were created above and are used in libjpeg's documented order.
        unsafe {
            jpeg_mem_src(&mut src.cinfo, input.as_ptr(), input.len() as c_ulong);
            for marker in (APP0..=APP0 + 15).chain([COM]) {
                jpeg_save_markers(&mut src.cinfo, marker, 0xFFFF);
            }
            jpeg_read_header(&mut src.cinfo, 1);
            let pixels = u64::from(src.cinfo.image_width) * u64::from(src.cinfo.image_height);
            if pixels > max_pixels {
                resume_unwind(Box::new(LibjpegFailure(format!(
                    "{pixels} pixels is more than the {max_pixels} allowed"
                ))));
            }
            let coefficients = jpeg_read_coefficients(&mut src.cinfo);
            dst.use_libjpeg_profile();
            jpeg_copy_critical_parameters(&src.cinfo, &mut dst.cinfo);
            set_progression(&mut dst.cinfo);
            dst.cinfo.optimize_coding = 1;
            dst.memory_destination();
            jpeg_write_coefficients(&mut dst.cinfo, coefficients);
            copy_markers(&src.cinfo, &mut dst.cinfo);
            jpeg_finish_compress(&mut dst.cinfo);
            jpeg_finish_decompress(&mut src.cinfo);
        }
    })?;
    Ok(dst.output())
}

/// Copies the saved APPn and COM segments, except the JFIF and Adobe headers libjpeg writes
/// itself (as jpegtran does).
///
/// # Safety
/// `src` has saved markers (jpeg_save_markers before jpeg_read_header); `dst` has started
/// writing (after jpeg_write_coefficients or jpeg_start_compress).
unsafe fn copy_markers(src: &jpeg_decompress_struct, dst: &mut jpeg_compress_struct) {
    let mut marker = src.marker_list;
    while let Some(m) = unsafe { marker.as_ref() } {
        let data = if m.data.is_null() {
            &[][..]
        } else {
            unsafe { std::slice::from_raw_parts(m.data, m.data_length as usize) }
        };
        let code = c_int::from(m.marker);
        let written_by_libjpeg =
            (code == APP0 && dst.write_JFIF_header != 0 && data.starts_with(b"JFIF\0"))
                || (code == APP14 && dst.write_Adobe_marker != 0 && data.starts_with(b"Adobe"));
        if !written_by_libjpeg {
            unsafe { jpeg_write_marker(dst, code, data.as_ptr(), data.len() as c_uint) };
        }
        marker = m.next;
    }
}

/// 8-bit samples, row by row, `components` per pixel (1: grey, 3: RGB).
pub struct RawImage<'a> {
    pub width: u32,
    pub height: u32,
    pub components: u32,
    pub samples: &'a [u8],
}

/// Encodes pixels as a progressive JPEG with libjpeg's default script; `markers` (code, data)
/// are written after the header.
pub fn encode_progressive(
    image: &RawImage<'_>,
    quality: i32,
    markers: &[(u8, Vec<u8>)],
) -> Result<Vec<u8>, String> {
    let row = image.width as usize * image.components as usize;
    if image.width == 0 || image.height == 0 || image.samples.len() < row * image.height as usize {
        return Err("image has no pixels or too few samples".into());
    }
    let mut dst = Compressor::new()?;
    guarded(|| {
        // SAFETY: the samples outlive the compression and hold `height` rows of `row` bytes
        // (checked above); libjpeg reads each row pointer once per jpeg_write_scanlines.
        unsafe {
            dst.use_libjpeg_profile();
            dst.cinfo.image_width = image.width;
            dst.cinfo.image_height = image.height;
            dst.cinfo.input_components = image.components as c_int;
            dst.cinfo.in_color_space = if image.components == 1 {
                J_COLOR_SPACE::JCS_GRAYSCALE
            } else {
                J_COLOR_SPACE::JCS_RGB
            };
            jpeg_set_defaults(&mut dst.cinfo);
            jpeg_set_quality(&mut dst.cinfo, quality, 1);
            set_progression(&mut dst.cinfo);
            dst.cinfo.optimize_coding = 1;
            dst.memory_destination();
            jpeg_start_compress(&mut dst.cinfo, 1);
            for (code, data) in markers {
                jpeg_write_marker(
                    &mut dst.cinfo,
                    c_int::from(*code),
                    data.as_ptr(),
                    data.len() as c_uint,
                );
            }
            for line in image.samples.chunks_exact(row).take(image.height as usize) {
                let rows = [line.as_ptr()];
                jpeg_write_scanlines(&mut dst.cinfo, rows.as_ptr(), 1);
            }
            jpeg_finish_compress(&mut dst.cinfo);
        }
    })?;
    Ok(dst.output())
}
