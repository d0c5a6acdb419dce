#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| telegate_fuzz_checks::mqtt_rules(data));
