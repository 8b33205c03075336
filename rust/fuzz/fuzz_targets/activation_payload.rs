#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sls_kernel_fuzz::activation_payload(data));
