#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shoal_fuzz_harness::tracker_rpc::run(data));
