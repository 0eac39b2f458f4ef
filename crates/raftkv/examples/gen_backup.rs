//! Writes a backup image of N generated keys, for loading a cluster with a
//! large state quickly (`raftkv snapshot restore`) in benchmarks: keys
//! `key-0000000000`, ..., values of `--value-size` printable bytes that
//! differ from key to key (as random writes of text values would leave).
//!
//! `cargo run --release -p raftkv --example gen_backup -- --keys 1000000 --value-size 100 --out state.rkv`

use std::io::BufWriter;

use raftkv::state::image::{ImageHeader, ImageWriter};

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let keys: u64 = arg("--keys").and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let value_size: usize = arg("--value-size").and_then(|v| v.parse().ok()).unwrap_or(100);
    let Some(out) = arg("--out") else {
        eprintln!("usage: gen_backup --keys N --value-size B --out FILE");
        std::process::exit(2);
    };
    let header = ImageHeader::generated_backup(keys);
    let file = std::fs::File::create(&out).unwrap_or_else(|e| panic!("creating {out}: {e}"));
    let mut writer = ImageWriter::new(BufWriter::with_capacity(1 << 20, file), &header).expect("writing the header");
    // A SplitMix64 stream, so that values do not compress to nothing.
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    };
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut value = vec![0u8; value_size];
    for i in 0..keys {
        for chunk in value.chunks_mut(10) {
            let bits = next();
            for (j, byte) in chunk.iter_mut().enumerate() {
                *byte = ALPHABET[((bits >> (6 * j)) & 63) as usize];
            }
        }
        writer.record(&format!("key-{i:010}"), &value, 1).expect("writing a record");
    }
    writer.finish().expect("writing the trailer");
    eprintln!("wrote {keys} keys of {value_size}-byte values to {out}");
}
