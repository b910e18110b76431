//! The property-testing harness the codecs' tests share, standing in for a coverage-guided
//! fuzzer on the stable toolchain: a reproducible generator, a time-or-count budget from the
//! environment, and the mutations that turn a valid HTTP message into a suspicious one.
//!
//! A run lasts `WEIR_FUZZ_SECONDS` (default 2) or `WEIR_FUZZ_CASES` cases, whichever ends
//! first (at least 200 cases); `WEIR_FUZZ_SEED` replays one seed (a failure prints its seed).

use std::time::{Duration, Instant};

/// xorshift64*: small, fast and reproducible from a printed seed.
pub struct Rng(pub u64);

impl Rng {
    /// The next 64 random bits.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A number in `0..n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// True one time in `one_in`.
    pub fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }

    /// One of `items`.
    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// The harness's budget from the environment.
struct Budget {
    until: Instant,
    cases: u64,
    seed: Option<u64>,
}

fn budget() -> Budget {
    let var = |name: &str| std::env::var(name).ok().and_then(|v| v.parse::<u64>().ok());
    Budget {
        until: Instant::now() + Duration::from_secs(var("WEIR_FUZZ_SECONDS").unwrap_or(2)),
        cases: var("WEIR_FUZZ_CASES").unwrap_or(u64::MAX),
        seed: var("WEIR_FUZZ_SEED"),
    }
}

/// Run `case` with fresh seeds until the budget is spent; returns how many ran.
pub fn run(name: &str, mut case: impl FnMut(&mut Rng, u64)) -> u64 {
    let budget = budget();
    if let Some(seed) = budget.seed {
        case(&mut Rng(seed | 1), seed);
        return 1;
    }
    let start = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1);
    let mut ran = 0;
    while ran < budget.cases && (ran < 200 || Instant::now() < budget.until) {
        let seed = start.wrapping_add(ran.wrapping_mul(0x9E37_79B9_7F4A_7C15)) | 1;
        let outcome =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| case(&mut Rng(seed), seed)));
        if let Err(panic) = outcome {
            eprintln!("{name}: failed with WEIR_FUZZ_SEED={seed}");
            std::panic::resume_unwind(panic);
        }
        ran += 1;
    }
    eprintln!("{name}: {ran} cases");
    ran
}

/// A short lower-case token (a field name part, a reason phrase).
pub fn token(rng: &mut Rng) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789-";
    (0..1 + rng.below(12))
        .map(|_| *rng.pick(alphabet) as char)
        .collect()
}

/// A field value of the characters real ones carry (no leading or trailing space).
pub fn field_value(rng: &mut Rng) -> String {
    let alphabet = b"abcdefghijklmnopqrstuvwxyzABC 0123456789-_.,;=/\"\t";
    let value: String = (0..rng.below(24))
        .map(|_| *rng.pick(alphabet) as char)
        .collect();
    value.trim().to_string()
}

/// `wire` (a valid message) mutated in one to three ways: a flipped bit, an inserted or a
/// deleted run of bytes, truncation, a repeated run, or an HTTP token spliced in.
pub fn mutate(rng: &mut Rng, wire: &mut Vec<u8>) {
    const SPLICE: [&[u8]; 17] = [
        b"\r\n",
        b"\n",
        b"\r",
        b"\n\n",
        b"0\r\n\n",
        b"\r\n\n",
        b"\0",
        b"0\r\n\r\n",
        b"transfer-encoding: chunked\r\n",
        b"content-length: 3\r\n",
        b"content-length: 18446744073709551616\r\n",
        b"HTTP/1.1 200 OK\r\n",
        b";",
        b" ",
        b"ffffffffffffffff",
        b"\r\n\r\n",
        b":",
    ];
    for _ in 0..1 + rng.below(3) {
        let at = rng.below(wire.len() + 1);
        match rng.below(6) {
            0 if !wire.is_empty() => {
                let i = rng.below(wire.len());
                wire[i] ^= 1 << rng.below(8);
            }
            1 => wire.insert(at, rng.next() as u8),
            2 if at < wire.len() => {
                let end = (at + 1 + rng.below(8)).min(wire.len());
                wire.drain(at..end);
            }
            3 => wire.truncate(at),
            4 => {
                let splice = *rng.pick(&SPLICE);
                wire.splice(at..at, splice.iter().copied());
            }
            _ if at < wire.len() => {
                let end = (at + 1 + rng.below(16)).min(wire.len());
                let copy = wire[at..end].to_vec();
                wire.splice(at..at, copy);
            }
            _ => {}
        }
    }
}
