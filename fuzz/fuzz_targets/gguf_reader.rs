//! Fuzzes the GGUF reader: any byte string must parse or fail with an error — never
//! panic, hang or allocate without bound — and every tensor of a file that parses must
//! decode or fail cleanly.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(g) = lowbit::gguf::GgufFile::from_bytes("fuzz.gguf", data.to_vec()) {
        for t in &g.tensors {
            // Bound the work per input: skip decoding absurdly large (but valid) tensors.
            if t.n_elements <= 1 << 20 {
                let _ = g.dequantize(&t.name);
            }
        }
        let _ = lowbit::inspect::summarize_gguf(&g);
    }
});
