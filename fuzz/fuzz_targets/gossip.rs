#![no_main]

use libfuzzer_sys::fuzz_target;
use raftkv_fuzz::support::Tracking;

#[global_allocator]
static ALLOC: Tracking = Tracking;

fuzz_target!(|data: &[u8]| raftkv_fuzz::kv::gossip(data));
