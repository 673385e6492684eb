//! Fuzzes the safetensors header parser and lowbit's validation on top of it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = lowbit::safetensors::parse_header(std::path::Path::new("fuzz.safetensors"), data);
});
