//! Priority classes and message kinds: the Rust side of the `Priority` and `Kind` protobuf
//! enums. Decoding rejects unspecified and unknown values.

use std::fmt;
use std::str::FromStr;

use crate::error::UnknownValue;
use crate::pb;

/// Scheduling class of a message, from the most to the least urgent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Receipts, DHT and other protocol control traffic.
    Control = 1,
    /// One-to-one conversation.
    Interactive = 2,
    /// Group conversation.
    Group = 3,
    /// Mailbox sync, catch-up and other bulk transfers.
    Bulk = 4,
    /// Typing, presence: dropped first.
    Ephemeral = 5,
}

impl Priority {
    /// Every class, most urgent first.
    pub const ALL: [Priority; 5] = [
        Priority::Control,
        Priority::Interactive,
        Priority::Group,
        Priority::Bulk,
        Priority::Ephemeral,
    ];

    /// Lowercase name, as used in config, the API and metrics labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Control => "control",
            Self::Interactive => "interactive",
            Self::Group => "group",
            Self::Bulk => "bulk",
            Self::Ephemeral => "ephemeral",
        }
    }
}

impl From<Priority> for pb::Priority {
    fn from(p: Priority) -> Self {
        match p {
            Priority::Control => pb::Priority::Control,
            Priority::Interactive => pb::Priority::Interactive,
            Priority::Group => pb::Priority::Group,
            Priority::Bulk => pb::Priority::Bulk,
            Priority::Ephemeral => pb::Priority::Ephemeral,
        }
    }
}

impl From<Priority> for i32 {
    fn from(p: Priority) -> Self {
        pb::Priority::from(p) as i32
    }
}

impl TryFrom<i32> for Priority {
    type Error = UnknownValue;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match pb::Priority::try_from(value) {
            Ok(pb::Priority::Control) => Ok(Self::Control),
            Ok(pb::Priority::Interactive) => Ok(Self::Interactive),
            Ok(pb::Priority::Group) => Ok(Self::Group),
            Ok(pb::Priority::Bulk) => Ok(Self::Bulk),
            Ok(pb::Priority::Ephemeral) => Ok(Self::Ephemeral),
            Ok(pb::Priority::Unspecified) | Err(_) => Err(UnknownValue {
                what: "priority",
                value: value.to_string(),
            }),
        }
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Priority {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "priority",
                value: s.to_owned(),
            })
    }
}

/// What the decrypted body of a message contains.
///
/// The discriminant (`Kind::Chat as u8`) is the protobuf value, as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    /// A chat message: UTF-8 text.
    Chat = 1,
    /// Group control: an encoded `GroupControl` (a Welcome part, or a
    /// request to a group's owner).
    Group = 2,
}

impl Kind {
    /// Every kind.
    pub const ALL: [Kind; 2] = [Kind::Chat, Kind::Group];

    /// Lowercase name, as used in the API.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Group => "group",
        }
    }
}

impl From<Kind> for pb::Kind {
    fn from(k: Kind) -> Self {
        match k {
            Kind::Chat => pb::Kind::Chat,
            Kind::Group => pb::Kind::Group,
        }
    }
}

impl From<Kind> for i32 {
    fn from(k: Kind) -> Self {
        pb::Kind::from(k) as i32
    }
}

impl TryFrom<i32> for Kind {
    type Error = UnknownValue;

    fn try_from(value: i32) -> Result<Self, Self::Error> {
        match pb::Kind::try_from(value) {
            Ok(pb::Kind::Chat) => Ok(Self::Chat),
            Ok(pb::Kind::Group) => Ok(Self::Group),
            Ok(pb::Kind::Unspecified) | Err(_) => Err(UnknownValue {
                what: "kind",
                value: value.to_string(),
            }),
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Kind {
    type Err = UnknownValue;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| UnknownValue {
                what: "kind",
                value: s.to_owned(),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_names_and_values_roundtrip() {
        for p in Priority::ALL {
            assert_eq!(p.as_str().parse::<Priority>().unwrap(), p);
            assert_eq!(Priority::try_from(i32::from(p)).unwrap(), p);
        }
        assert_eq!(i32::from(Priority::Control), 1);
        assert_eq!(i32::from(Priority::Ephemeral), 5);
    }

    #[test]
    fn unknown_values_are_rejected() {
        assert!(Priority::try_from(0).is_err());
        assert!(Priority::try_from(6).is_err());
        assert!(Priority::try_from(-1).is_err());
        assert!("urgent".parse::<Priority>().is_err());
        assert!(Kind::try_from(0).is_err());
        assert!(Kind::try_from(3).is_err());
        assert_eq!(Kind::try_from(2).unwrap(), Kind::Group);
        assert_eq!(Kind::try_from(1).unwrap(), Kind::Chat);
        assert_eq!("chat".parse::<Kind>().unwrap(), Kind::Chat);
    }
}
