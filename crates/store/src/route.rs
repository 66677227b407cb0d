//! The route preference a sender gives one outgoing message.
//!
//! The store only keeps the choice (column `outbox.route`, stored as [`Route::as_str`]); the
//! node's delivery logic decides what each choice means on the network.

use std::fmt;
use std::str::FromStr;

use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSqlOutput, ValueRef};
use rusqlite::ToSql;

/// How the sender wants a message routed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Route {
    /// The node chooses (the default).
    #[default]
    Auto,
    /// Only over a direct connection to the recipient.
    Direct,
    /// Hop by hop through other peers.
    Multihop,
    /// Through onion relays, so no relay sees both ends.
    Onion,
}

impl Route {
    /// Every route, default first.
    pub const ALL: [Route; 4] = [Route::Auto, Route::Direct, Route::Multihop, Route::Onion];

    /// The lowercase name stored in the database and used in the API (`"auto"`, `"direct"`,
    /// `"multihop"`, `"onion"`).
    pub fn as_str(self) -> &'static str {
        match self {
            Route::Auto => "auto",
            Route::Direct => "direct",
            Route::Multihop => "multihop",
            Route::Onion => "onion",
        }
    }
}

impl fmt::Display for Route {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A string that names no [`Route`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown route {0:?}; expected one of \"auto\", \"direct\", \"multihop\" or \"onion\"")]
pub struct ParseRouteError(pub String);

impl FromStr for Route {
    type Err = ParseRouteError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Route::ALL
            .into_iter()
            .find(|route| route.as_str() == s)
            .ok_or_else(|| ParseRouteError(s.to_owned()))
    }
}

impl ToSql for Route {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Route {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        value
            .as_str()?
            .parse()
            .map_err(|e| FromSqlError::Other(Box::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_auto_is_the_default() {
        for r in Route::ALL {
            assert_eq!(r.as_str().parse::<Route>(), Ok(r));
            assert_eq!(r.to_string(), r.as_str());
        }
        assert_eq!(Route::default(), Route::Auto);
        assert_eq!(Route::ALL[0], Route::default());
    }

    #[test]
    fn unknown_names_are_refused_with_the_accepted_ones() {
        for bad in ["", "Direct", "multi-hop", "Onion", " auto"] {
            let err = bad.parse::<Route>().unwrap_err();
            assert_eq!(err, ParseRouteError(bad.to_owned()));
            let message = err.to_string();
            for name in ["\"auto\"", "\"direct\"", "\"multihop\"", "\"onion\""] {
                assert!(message.contains(name), "{message}");
            }
        }
    }
}
