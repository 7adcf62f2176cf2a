use std::fmt;

/// Makes message and batch ids.
pub trait IdFactory: Send + Sync + fmt::Debug + 'static {
    /// A new unique id.
    fn new_id(&self) -> String;
}

/// UUID version 7 ids (time ordered, 36 characters); the default.
#[derive(Debug, Clone, Copy, Default)]
pub struct UuidFactory;

impl IdFactory for UuidFactory {
    fn new_id(&self) -> String {
        uuid::Uuid::now_v7().to_string()
    }
}

/// KSUIDs (27 base62 characters, time ordered), as the Go library uses for outbox
/// batch ids.
#[derive(Debug, Clone, Copy, Default)]
pub struct KsuidFactory;

/// KSUID epoch: 2014-05-13T16:53:20Z, in Unix seconds.
const KSUID_EPOCH: i64 = 1_400_000_000;
const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

impl IdFactory for KsuidFactory {
    fn new_id(&self) -> String {
        let secs = chrono::Utc::now().timestamp() - KSUID_EPOCH;
        let mut raw = [0u8; 20];
        raw[..4].copy_from_slice(&(secs.clamp(0, i64::from(u32::MAX)) as u32).to_be_bytes());
        raw[4..].copy_from_slice(uuid::Uuid::new_v4().as_bytes());
        ksuid_base62(raw)
    }
}

/// Base62 of a 160-bit big-endian number, left-padded with `0` to 27 characters.
fn ksuid_base62(raw: [u8; 20]) -> String {
    // Five 32-bit words, divided by 62 repeatedly (long division).
    let mut words: Vec<u32> = raw
        .chunks(4)
        .map(|c| u32::from_be_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut out = [b'0'; 27];
    let mut pos = out.len();
    while words.iter().any(|w| *w != 0) {
        let mut rem: u64 = 0;
        for w in words.iter_mut() {
            let acc = (rem << 32) | u64::from(*w);
            *w = (acc / 62) as u32;
            rem = acc % 62;
        }
        pos -= 1;
        out[pos] = BASE62[rem as usize];
    }
    String::from_utf8(out.to_vec()).expect("base62 is ASCII")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksuid_is_27_base62_chars_and_sortable() {
        let a = KsuidFactory.new_id();
        assert_eq!(a.len(), 27);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_ne!(a, KsuidFactory.new_id());
    }

    #[test]
    fn ksuid_encoding_matches_reference_vectors() {
        // Reference values from the KSUID specification.
        assert_eq!(ksuid_base62([0; 20]), "000000000000000000000000000");
        assert_eq!(ksuid_base62([0xff; 20]), "aWgEPTl1tmebfsQzFP4bxwgy80V");
    }

    #[test]
    fn uuid_is_v7() {
        let id = UuidFactory.new_id();
        let parsed = uuid::Uuid::parse_str(&id).unwrap();
        assert_eq!(parsed.get_version_num(), 7);
    }
}
