#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| logferry::fuzzing::json_lift(data));
