//! SHA-256 digests in Reflow's text, JSON and binary forms, and the streaming hasher.
//!
//! Text form `sha256:<64 lowercase hex>`; parsing also takes the bare 64-hex form. The zero digest
//! (no value) renders as `<zero>`; `""` and `<zero>` parse to it. The binary form used inside other
//! digests is the algorithm code `0x0005` (big-endian u16) followed by the 32 hash bytes.
//!
//! The hasher is `sha2`, which uses the CPU's SHA extensions (`sha_ni`) when present.

use std::fmt;
use std::io::{self, Read, Write};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest as _, Sha256};
use thiserror::Error;

use crate::error::{Classify, Kind};

/// Length of a SHA-256 hash in bytes.
pub const DIGEST_LEN: usize = 32;
/// Algorithm code of SHA-256 in the binary form (Go's `crypto.SHA256`).
pub const SHA256_CODE: u16 = 5;
/// Buffer size for streaming hashes: large enough that syscalls are not the bottleneck.
pub const HASH_BUFFER: usize = 1 << 20;

thread_local! {
    /// This thread's streaming buffer, kept between hashes: a fresh zeroed megabyte per file
    /// was a tenth of the time to ingest 10,000 small files.
    static BUFFER: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Runs `f` with a [`HASH_BUFFER`]-byte buffer, this thread's own when it is free (a nested
/// call gets a fresh one).
pub fn with_buffer<R>(f: impl FnOnce(&mut [u8]) -> R) -> R {
    let mut buf = BUFFER.with(|b| b.take());
    buf.resize(HASH_BUFFER, 0);
    let r = f(&mut buf);
    BUFFER.with(|b| b.replace(buf));
    r
}

/// A SHA-256 digest, or the zero digest.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Digest([u8; DIGEST_LEN]);

/// Why a digest string was rejected.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum DigestError {
    /// An algorithm other than sha256 was named.
    #[error("wrong hash: digest {input:?} uses algorithm {algorithm:?}; only sha256 is supported")]
    WrongAlgorithm {
        /// The whole input (truncated).
        input: String,
        /// The algorithm named.
        algorithm: String,
    },
    /// The hex part has the wrong length.
    #[error("invalid digest {input:?}: expected 64 hex characters, got {len}")]
    BadLength {
        /// The whole input (truncated).
        input: String,
        /// Length of the hex part.
        len: usize,
    },
    /// The hex part has a non-hex character.
    #[error("invalid digest {input:?}: not hexadecimal")]
    BadHex {
        /// The whole input (truncated).
        input: String,
    },
}

impl Classify for DigestError {
    fn kind(&self) -> Kind {
        Kind::Invalid
    }
}

/// Truncate untrusted input for error messages.
fn excerpt(s: &str) -> String {
    s.chars().take(80).collect()
}

impl Digest {
    /// The zero digest.
    pub const ZERO: Digest = Digest([0; DIGEST_LEN]);

    /// A digest from raw hash bytes.
    pub const fn from_bytes(bytes: [u8; DIGEST_LEN]) -> Self {
        Digest(bytes)
    }

    /// The SHA-256 of `data`.
    pub fn of(data: &[u8]) -> Self {
        Digest(Sha256::digest(data).into())
    }

    /// The SHA-256 of everything `r` yields, and its length, read in [`HASH_BUFFER`] chunks.
    ///
    /// # Errors
    /// Any read error of `r`.
    pub fn of_reader(mut r: impl Read) -> io::Result<(Digest, u64)> {
        let mut h = Hasher::new();
        with_buffer(|buf| {
            loop {
                match r.read(buf) {
                    Ok(0) => break,
                    Ok(n) => h.update(&buf[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        })?;
        Ok(h.finish())
    }

    /// The raw hash bytes.
    pub fn as_bytes(&self) -> &[u8; DIGEST_LEN] {
        &self.0
    }

    /// Whether this is the zero digest.
    pub fn is_zero(&self) -> bool {
        self.0 == [0; DIGEST_LEN]
    }

    /// The 64 lowercase hex characters.
    pub fn hex(&self) -> String {
        hex::encode(self.0)
    }

    /// The first 8 hex characters.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..4])
    }

    /// Writes the binary form (`0x0005` + 32 bytes) used inside other digests.
    ///
    /// # Errors
    /// Any write error of `w`.
    pub fn write_binary(&self, mut w: impl Write) -> io::Result<()> {
        w.write_all(&SHA256_CODE.to_be_bytes())?;
        w.write_all(&self.0)
    }

    /// Parses the text form, the bare hex form, `""` or `<zero>`.
    ///
    /// # Errors
    /// [`DigestError`] for another algorithm, a wrong length or non-hex characters.
    pub fn parse(s: &str) -> Result<Digest, DigestError> {
        if s.is_empty() || s == "<zero>" {
            return Ok(Digest::ZERO);
        }
        let hex_part = match s.split_once(':') {
            Some(("sha256", rest)) => rest,
            Some((alg, _)) => {
                return Err(DigestError::WrongAlgorithm {
                    input: excerpt(s),
                    algorithm: excerpt(alg),
                });
            }
            None => s,
        };
        if hex_part.len() != 2 * DIGEST_LEN {
            return Err(DigestError::BadLength {
                input: excerpt(s),
                len: hex_part.len(),
            });
        }
        let mut out = [0u8; DIGEST_LEN];
        hex::decode_to_slice(hex_part, &mut out)
            .map_err(|_| DigestError::BadHex { input: excerpt(s) })?;
        Ok(Digest(out))
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_zero() {
            f.write_str("<zero>")
        } else {
            write!(f, "sha256:{}", self.hex())
        }
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl FromStr for Digest {
    type Err = DigestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Digest::parse(s)
    }
}

impl Serialize for Digest {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = std::borrow::Cow::<str>::deserialize(d)?;
        Digest::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// Incremental SHA-256 that also counts bytes; usable as an [`io::Write`] sink.
#[derive(Debug, Clone, Default)]
pub struct Hasher {
    inner: Sha256,
    len: u64,
}

impl Hasher {
    /// A new hasher.
    pub fn new() -> Self {
        Hasher::default()
    }

    /// Feeds `data`.
    pub fn update(&mut self, data: &[u8]) {
        self.inner.update(data);
        self.len += data.len() as u64;
    }

    /// The digest and the number of bytes fed.
    pub fn finish(self) -> (Digest, u64) {
        (Digest(self.inner.finalize().into()), self.len)
    }
}

impl Write for Hasher {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    // printf 'foobar\n' | sha256sum
    const FOOBAR_NL: &str = "aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f";

    #[test]
    fn the_reused_buffer_leaves_nothing_behind() {
        // A long stream, then a short one on the same thread: the second hash sees only its
        // own bytes, and a hash inside another's buffer gets a buffer of its own.
        let long = vec![7u8; HASH_BUFFER + 10];
        assert_eq!(Digest::of_reader(&long[..]).unwrap().0, Digest::of(&long));
        let (d, n) = Digest::of_reader(&b"foobar\n"[..]).unwrap();
        assert_eq!((d.hex(), n), (FOOBAR_NL.to_string(), 7));
        let nested = with_buffer(|outer| {
            outer.fill(1);
            let inner = Digest::of_reader(&b"foobar\n"[..]).unwrap().0;
            (inner, outer.iter().all(|b| *b == 1), outer.len())
        });
        assert_eq!(nested, (d, true, HASH_BUFFER));
    }

    #[test]
    fn known_vector() {
        let d = Digest::of(b"foobar\n");
        assert_eq!(d.hex(), FOOBAR_NL);
        assert_eq!(d.to_string(), format!("sha256:{FOOBAR_NL}"));
        assert_eq!(d.short(), "aec07064");
        let (r, n) = Digest::of_reader(&b"foobar\n"[..]).unwrap();
        assert_eq!((r, n), (d, 7));
    }

    #[test]
    fn parse_forms() {
        let d = Digest::of(b"foobar\n");
        assert_eq!(Digest::parse(&format!("sha256:{FOOBAR_NL}")).unwrap(), d);
        assert_eq!(Digest::parse(FOOBAR_NL).unwrap(), d);
        assert_eq!(Digest::parse(&FOOBAR_NL.to_uppercase()).unwrap(), d);
        assert_eq!(Digest::parse("").unwrap(), Digest::ZERO);
        assert_eq!(Digest::parse("<zero>").unwrap(), Digest::ZERO);
        assert_eq!(Digest::ZERO.to_string(), "<zero>");
    }

    #[test]
    fn parse_rejects() {
        assert!(matches!(
            Digest::parse(&format!("sha512:{FOOBAR_NL}")),
            Err(DigestError::WrongAlgorithm { .. })
        ));
        assert!(matches!(
            Digest::parse("sha256:abcd"),
            Err(DigestError::BadLength { len: 4, .. })
        ));
        let bad = format!("sha256:{}zz", &FOOBAR_NL[..62]);
        assert!(matches!(
            Digest::parse(&bad),
            Err(DigestError::BadHex { .. })
        ));
        let e = Digest::parse("md5:00").unwrap_err();
        assert!(e.to_string().contains("wrong hash"), "{e}");
        assert_eq!(e.kind(), Kind::Invalid);
        // Multi-byte characters must not panic on slicing.
        assert!(Digest::parse(&"é".repeat(32)).is_err());
    }

    #[test]
    fn binary_form() {
        let d = Digest::of(b"x");
        let mut out = Vec::new();
        d.write_binary(&mut out).unwrap();
        assert_eq!(out.len(), 34);
        assert_eq!(&out[..2], &[0, 5]);
        assert_eq!(&out[2..], d.as_bytes());
    }

    #[test]
    fn json_form() {
        let d = Digest::of(b"foobar\n");
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            format!("\"sha256:{FOOBAR_NL}\"")
        );
        assert_eq!(serde_json::to_string(&Digest::ZERO).unwrap(), "\"<zero>\"");
        assert!(serde_json::from_str::<Digest>("\"sha1:00\"").is_err());
    }

    proptest! {
        #[test]
        fn text_round_trip(bytes in any::<[u8; 32]>()) {
            let d = Digest::from_bytes(bytes);
            prop_assert_eq!(Digest::parse(&d.to_string()).unwrap(), d);
            prop_assert_eq!(Digest::parse(&d.hex()).unwrap(), d);
            let j = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<Digest>(&j).unwrap(), d);
        }

        #[test]
        fn parse_never_panics(s in ".{0,100}") {
            let _ = Digest::parse(&s);
        }

        #[test]
        fn streaming_equals_one_shot(data in proptest::collection::vec(any::<u8>(), 0..5000), split in 0usize..5000) {
            let split = split.min(data.len());
            let mut h = Hasher::new();
            h.update(&data[..split]);
            h.update(&data[split..]);
            prop_assert_eq!(h.finish(), (Digest::of(&data), data.len() as u64));
        }
    }
}
