#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| vault_server::fuzzing::json_body(data));
