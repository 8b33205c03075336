#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| sls_kernel_fuzz::ocra_suite(data));
