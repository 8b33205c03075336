#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sls_kernel_fuzz::manual_code(data));
