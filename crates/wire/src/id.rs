//! Message ids: 128 random bits chosen by the sender, unique per sender.

use std::fmt;
use std::str::FromStr;

use rand::RngCore;

use crate::error::ParseIdError;
use crate::limits::MESSAGE_ID_BYTES;

/// A 16-byte message id, shown as 32 lowercase hex characters.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct MessageId([u8; MESSAGE_ID_BYTES]);

impl MessageId {
    /// Draws a fresh id from `rng`.
    pub fn random<R: RngCore + ?Sized>(rng: &mut R) -> Self {
        let mut bytes = [0u8; MESSAGE_ID_BYTES];
        rng.fill_bytes(&mut bytes);
        Self(bytes)
    }

    /// Wraps 16 bytes, as they appear on the wire.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParseIdError> {
        <[u8; MESSAGE_ID_BYTES]>::try_from(bytes)
            .map(Self)
            .map_err(|_| ParseIdError::WrongLength(bytes.len()))
    }

    /// The 16 bytes of the id.
    pub fn as_bytes(&self) -> &[u8; MESSAGE_ID_BYTES] {
        &self.0
    }
}

impl From<[u8; MESSAGE_ID_BYTES]> for MessageId {
    fn from(bytes: [u8; MESSAGE_ID_BYTES]) -> Self {
        Self(bytes)
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = ParseIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 2 * MESSAGE_ID_BYTES {
            return Err(ParseIdError::WrongLength(s.len() / 2));
        }
        let mut bytes = [0u8; MESSAGE_ID_BYTES];
        hex::decode_to_slice(s, &mut bytes).map_err(|_| ParseIdError::NotHex)?;
        Ok(Self(bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_and_parse_roundtrip() {
        let id = MessageId::from([0xab; 16]);
        assert_eq!(id.to_string(), "ab".repeat(16));
        assert_eq!(id.to_string().parse::<MessageId>().unwrap(), id);
        assert_eq!("AB".repeat(16).parse::<MessageId>().unwrap(), id);
        assert_eq!(format!("{id:?}"), format!("MessageId({})", "ab".repeat(16)));
    }

    #[test]
    fn rejects_bad_input() {
        assert_eq!(
            MessageId::from_bytes(&[0; 15]),
            Err(ParseIdError::WrongLength(15))
        );
        assert_eq!("ab".parse::<MessageId>(), Err(ParseIdError::WrongLength(1)));
        assert_eq!(
            "zz".repeat(16).parse::<MessageId>(),
            Err(ParseIdError::NotHex)
        );
        // A multi-byte character must not make slicing panic.
        assert!("é".repeat(16).parse::<MessageId>().is_err());
    }
}
