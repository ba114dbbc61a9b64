//! Piece hashing: sha256 alone (`Digester`) and the metainfo computation (`MetainfoBuilder`,
//! one sha256 pass that records the chaining values piece checks are made of), over a
//! 256 MiB blob fed in 1 MiB updates as an upload or a backend read feeds them.
//! Baseline (in `bench/micro.sh`): `openssl dgst -sha256` over 256 MiB on the same machine.

use divan::Bencher;
use divan::counter::BytesCount;
use shoal_core::{Digester, MetainfoBuilder};
use shoal_microbench::{MIB, pattern};

const BLOB: usize = 256 * MIB;
const UPDATE: usize = MIB;

fn main() {
    divan::main();
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn digester(bencher: Bencher) {
    let chunk = pattern(UPDATE, 1);
    bencher.counter(BytesCount::new(BLOB)).bench(|| {
        let mut digester = Digester::new();
        for _ in 0..BLOB / UPDATE {
            digester.update(&chunk);
        }
        digester.finish()
    });
}

#[divan::bench(sample_count = 10, sample_size = 1)]
fn metainfo_builder(bencher: Bencher) {
    let chunk = pattern(UPDATE, 1);
    bencher.counter(BytesCount::new(BLOB)).bench(|| {
        let mut builder = MetainfoBuilder::new(BLOB as u64);
        for _ in 0..BLOB / UPDATE {
            builder.update(&chunk);
        }
        builder
            .finish()
            .expect("exactly the declared length was fed")
    });
}
