#![no_main]
//! Fuzzes the `Lines` decoder; see `common.rs` for what is checked.

use libfuzzer_sys::fuzz_target;
use session_core::Framing;

mod common;

fuzz_target!(|data: &[u8]| common::check(Framing::Lines, data));
