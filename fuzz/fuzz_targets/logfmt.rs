#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| logferry::fuzzing::logfmt(data));
