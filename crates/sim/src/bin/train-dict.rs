//! Trains the zstd dictionary for chat message bodies and measures it.
//!
//! ```text
//! cargo run --release -p peercomm-sim --bin train-dict -- OUT_PATH [--size BYTES] [--train N] [--id ID] [--sweep]
//! ```
//!
//! Trains a `--size`-byte dictionary (default 16 KiB) on `--train` messages
//! (default 20,000) from the corpus's training seeds, sets its id to `--id`
//! (default 32769), writes it to `OUT_PATH`, prints the id,
//! then measures it on 10,000 held-out messages (seeds the training never saw)
//! against no compression and against plain zstd, under the rules `seal`
//! applies (a body is compressed only when its encoded `Body` gets smaller).
//! `--sweep` also measures dictionary sizes from 4 to 64 KiB and zstd levels.
//!
//! The frame settings mirror `peercomm-wire`: no checksum, the content size in
//! the frame header, no dictionary id in the frame (the `Body` carries it).

use std::io;
use std::process::ExitCode;

use peercomm_sim::corpus::{chat_messages, incompressible, HELD_OUT_SEEDS, TRAINING_SEEDS};
use peercomm_wire::pb;
use prost::Message;
use zstd::dict::EncoderDictionary;
use zstd::zstd_safe::CParameter;

/// zstd level `peercomm-wire` compresses at (`COMPRESS_LEVEL`).
const LEVEL: i32 = 3;
/// Messages generated per seed.
const MESSAGES_PER_SEED: usize = 1_000;
/// Held-out messages measured.
const HELD_OUT_MESSAGES: usize = 10_000;
/// Length buckets (bytes) of the per-length table.
const BUCKETS: &[usize] = &[
    0, 8, 12, 16, 18, 20, 22, 24, 28, 32, 40, 48, 64, 96, 128, 256, 512,
];
/// First dictionary id of the private range of RFC 8878 (lower ids are reserved).
const PRIVATE_IDS_START: u32 = 32_768;
/// The id `chat-v1.zdict` gets: the smallest private ids take 3 bytes as a protobuf
/// varint, where ids zstd picks at random take 5.
const DEFAULT_DICT_ID: u32 = PRIVATE_IDS_START + 1;
/// First four bytes of a zstd dictionary (0xEC30A437, little-endian); the id follows.
const DICT_MAGIC: [u8; 4] = [0x37, 0xa4, 0x30, 0xec];

struct Args {
    out: String,
    size: usize,
    train: usize,
    id: u32,
    sweep: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut args = std::env::args().skip(1);
    let mut out = None;
    let mut size = 16 * 1024;
    let mut train = 20_000;
    let mut id = DEFAULT_DICT_ID;
    let mut sweep = false;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--size" => size = number(args.next(), "--size")?,
            "--train" => train = number(args.next(), "--train")?,
            "--id" => {
                id = u32::try_from(number(args.next(), "--id")?)
                    .ok()
                    .filter(|id| (PRIVATE_IDS_START..1 << 31).contains(id))
                    .ok_or("--id must be in 32768..2^31 (the private range of RFC 8878)")?
            }
            "--sweep" => sweep = true,
            "-h" | "--help" => return Err(String::new()),
            _ if out.is_none() && !arg.starts_with("--") => out = Some(arg),
            _ => return Err(format!("unexpected argument {arg:?}")),
        }
    }
    Ok(Args {
        out: out.ok_or("missing OUT_PATH")?,
        size,
        train,
        id,
        sweep,
    })
}

fn number(value: Option<String>, flag: &str) -> Result<usize, String> {
    value
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| format!("{flag} needs a number"))
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("train-dict: {e}");
            }
            eprintln!(
                "usage: train-dict OUT_PATH [--size BYTES] [--train MESSAGES] [--id ID] [--sweep]\n\
                 trains a zstd dictionary on synthetic chat and measures it on held-out messages"
            );
            return ExitCode::from(2);
        }
    };
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("train-dict: {e}");
            ExitCode::FAILURE
        }
    }
}

fn messages(seeds: std::ops::Range<u64>, n: usize) -> Vec<String> {
    let mut out = Vec::with_capacity(n);
    for seed in seeds {
        if out.len() >= n {
            break;
        }
        out.extend(chat_messages(seed, MESSAGES_PER_SEED.min(n - out.len())));
    }
    out
}

fn run(args: &Args) -> io::Result<()> {
    let training = messages(TRAINING_SEEDS, args.train);
    let held_out = messages(HELD_OUT_SEEDS, HELD_OUT_MESSAGES);
    println!(
        "training: {} messages ({} bytes) from seeds {}..; held out: {} messages ({} bytes) from seeds {}..",
        training.len(),
        total(&training),
        TRAINING_SEEDS.start,
        held_out.len(),
        total(&held_out),
        HELD_OUT_SEEDS.start
    );
    print_lengths(&held_out);

    let mut dict = zstd::dict::from_samples(&training, args.size)?;
    let trained_id = dict_id(&dict);
    set_dict_id(&mut dict, args.id)?;
    std::fs::write(&args.out, &dict)?;
    println!(
        "\ndictionary: {} bytes (asked {}), zstd dictionary id {} (zstd picked {trained_id}), written to {}",
        dict.len(),
        args.size,
        dict_id(&dict),
        args.out
    );

    let plain = Codec::Plain(LEVEL);
    let with_dict = Codec::dict(&dict, LEVEL);
    println!("\nheld-out totals (encoded Body bytes; ratio = raw text / Body):");
    let raw = total(&held_out);
    let row = |name: &str, m: Measured| {
        println!(
            "  {name:<40} {:>8} bytes  ratio {:.3}  ({:>5} of {} compressed)",
            m.bytes,
            ratio(raw, m.bytes),
            m.compressed,
            held_out.len()
        )
    };
    row("no compression", measure(&held_out, &plain, usize::MAX)?);
    row(
        "plain zstd -3, from 64 bytes (today)",
        measure(&held_out, &plain, 64)?,
    );
    row(
        "plain zstd -3, from 0 bytes",
        measure(&held_out, &plain, 0)?,
    );
    for min in [0, 16, 20, 24, 32, 64] {
        row(
            &format!("dictionary -3, from {min} bytes"),
            measure(&held_out, &with_dict, min)?,
        );
    }
    let frames_plain = frames(&held_out, &plain)?;
    let frames_dict = frames(&held_out, &with_dict)?;
    println!(
        "  bare zstd frames of every message: plain {frames_plain} bytes (ratio {:.3}), with dictionary {frames_dict} bytes (ratio {:.3})",
        ratio(raw, frames_plain),
        ratio(raw, frames_dict)
    );

    println!("\nby length (average encoded Body bytes; dictionary and plain zstd tried on every message):");
    println!(
        "  {:>9} {:>6} {:>10} {:>8} {:>8} {:>8}",
        "bytes", "count", "dict wins", "none", "dict", "plain"
    );
    for pair in BUCKETS.windows(2) {
        let (lo, hi) = (pair[0], pair[1]);
        let bucket: Vec<&[u8]> = held_out
            .iter()
            .map(String::as_bytes)
            .filter(|m| (lo..hi).contains(&m.len()))
            .collect();
        if bucket.is_empty() {
            continue;
        }
        let mut wins = 0;
        let (mut none_sum, mut dict_sum, mut plain_sum) = (0, 0, 0);
        for m in &bucket {
            let n = plain_body(m).encoded_len();
            let d = body_len(m, &with_dict, 0)?;
            wins += usize::from(d < n);
            none_sum += n;
            dict_sum += d;
            plain_sum += body_len(m, &plain, 0)?;
        }
        let c = bucket.len() as f64;
        println!(
            "  {:>4}-{:<4} {:>6} {:>9.0}% {:>8.1} {:>8.1} {:>8.1}",
            lo,
            hi - 1,
            bucket.len(),
            wins as f64 * 100.0 / c,
            none_sum as f64 / c,
            dict_sum as f64 / c,
            plain_sum as f64 / c
        );
    }

    let noise = incompressible(HELD_OUT_SEEDS.start, 4096);
    let noise_len = body_len(&noise, &with_dict, 0)?;
    println!(
        "\nincompressible 4096-byte body: {noise_len} Body bytes with the dictionary (uncompressed: {})",
        noise_len == plain_body(&noise).encoded_len()
    );

    if args.sweep {
        sweep(&training, &held_out, args.id)?;
    }
    Ok(())
}

fn sweep(training: &[String], held_out: &[String], id: u32) -> io::Result<()> {
    let raw = total(held_out);
    println!("\nsweep: dictionary size (level 3, from 20 bytes):");
    for kib in [4, 8, 12, 16, 24, 32, 64] {
        let mut dict = zstd::dict::from_samples(training, kib * 1024)?;
        set_dict_id(&mut dict, id)?;
        let with = measure(held_out, &Codec::dict(&dict, LEVEL), 20)?;
        println!(
            "  {:>3} KiB asked, {:>6} bytes: {:>8} Body bytes, ratio {:.3}",
            kib,
            dict.len(),
            with.bytes,
            ratio(raw, with.bytes)
        );
    }
    let mut dict = zstd::dict::from_samples(training, 16 * 1024)?;
    set_dict_id(&mut dict, id)?;
    println!(
        "sweep: zstd level (16 KiB dictionary prepared once, from 20 bytes; time on this machine):"
    );
    for level in [1, 3, 6, 9, 19] {
        let codec = Codec::dict(&dict, level);
        let with = measure(held_out, &codec, 20)?;
        let start = std::time::Instant::now();
        for m in held_out {
            codec.compress(m.as_bytes())?;
        }
        let per = start.elapsed() / held_out.len() as u32;
        println!(
            "  level {level:>2}: {:>8} Body bytes, ratio {:.3}, {per:?} per message",
            with.bytes,
            ratio(raw, with.bytes)
        );
    }
    Ok(())
}

/// A zstd level, with or without a dictionary prepared for it.
enum Codec {
    Plain(i32),
    Dict {
        id: u32,
        prepared: EncoderDictionary<'static>,
    },
}

impl Codec {
    fn dict(bytes: &[u8], level: i32) -> Self {
        Codec::Dict {
            id: dict_id(bytes),
            prepared: EncoderDictionary::copy(bytes, level),
        }
    }

    /// One zstd frame, set up as `peercomm-wire` sets it up.
    fn compress(&self, body: &[u8]) -> io::Result<Vec<u8>> {
        let mut c = match self {
            Codec::Plain(level) => zstd::bulk::Compressor::new(*level)?,
            Codec::Dict { prepared, .. } => {
                zstd::bulk::Compressor::with_prepared_dictionary(prepared)?
            }
        };
        c.set_parameter(CParameter::DictIdFlag(false))?;
        c.set_parameter(CParameter::ChecksumFlag(false))?;
        c.set_parameter(CParameter::ContentSizeFlag(true))?;
        c.compress(body)
    }

    /// Bytes the `compression` and `dictionary` fields take in a `Body`.
    fn field_bytes(&self) -> usize {
        match self {
            Codec::Plain(_) => 2,
            Codec::Dict { id, .. } => 3 + prost::encoding::encoded_len_varint(u64::from(*id)),
        }
    }
}

struct Measured {
    bytes: usize,
    compressed: usize,
}

/// Encoded `Body` bytes of all `messages` under `seal`'s rules, with compression
/// from `min_bytes`.
fn measure(messages: &[String], codec: &Codec, min_bytes: usize) -> io::Result<Measured> {
    let mut m = Measured {
        bytes: 0,
        compressed: 0,
    };
    for msg in messages {
        let len = body_len(msg.as_bytes(), codec, min_bytes)?;
        m.bytes += len;
        m.compressed += usize::from(len < plain_body(msg.as_bytes()).encoded_len());
    }
    Ok(m)
}

fn frames(messages: &[String], codec: &Codec) -> io::Result<usize> {
    let mut sum = 0;
    for msg in messages {
        sum += codec.compress(msg.as_bytes())?.len();
    }
    Ok(sum)
}

/// The encoded `Body` length of `body` under `seal`'s rules: compressed when at least
/// `min_bytes` long and when that makes the `Body` smaller.
fn body_len(body: &[u8], codec: &Codec, min_bytes: usize) -> io::Result<usize> {
    let none = plain_body(body).encoded_len();
    if body.len() < min_bytes {
        return Ok(none);
    }
    // The `dictionary` field is counted by hand, so this tool builds against the
    // schema before and after the field was added.
    let compressed = plain_body(&codec.compress(body)?).encoded_len() + codec.field_bytes();
    Ok(none.min(compressed))
}

fn plain_body(body: &[u8]) -> pb::Body {
    pb::Body {
        content: body.to_vec(),
        ..Default::default()
    }
}

fn total(messages: &[String]) -> usize {
    messages.iter().map(String::len).sum()
}

fn ratio(raw: usize, bytes: usize) -> f64 {
    raw as f64 / bytes.max(1) as f64
}

fn dict_id(dict: &[u8]) -> u32 {
    zstd::zstd_safe::get_dict_id_from_dict(dict).map_or(0, |id| id.get())
}

/// Rewrites the id in a zstd dictionary's header (bytes 4..8, little-endian). The id is
/// a label: nothing else in the dictionary depends on it.
fn set_dict_id(dict: &mut [u8], id: u32) -> io::Result<()> {
    match dict.get_mut(..8) {
        Some(header) if header[..4] == DICT_MAGIC => {
            header[4..].copy_from_slice(&id.to_le_bytes());
            Ok(())
        }
        _ => Err(io::Error::other(
            "the trainer did not produce a zstd dictionary",
        )),
    }
}

fn print_lengths(messages: &[String]) {
    let mut lens: Vec<usize> = messages.iter().map(String::len).collect();
    lens.sort_unstable();
    let at = |p: usize| lens[(lens.len() - 1) * p / 100];
    let chat = lens.iter().filter(|l| (10..=80).contains(*l)).count();
    println!(
        "held-out lengths (bytes): p10 {} p25 {} p50 {} p75 {} p90 {} p99 {} max {}; {}% in 10..=80",
        at(10),
        at(25),
        at(50),
        at(75),
        at(90),
        at(99),
        lens[lens.len() - 1],
        chat * 100 / lens.len()
    );
}
