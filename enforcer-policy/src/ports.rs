//! Destination port ranges of federation edges, written `5432` or
//! `8000-8099`.

use std::fmt;
use std::str::FromStr;

/// An inclusive range of destination ports; a single port has `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.first == self.last {
            write!(f, "{}", self.first)
        } else {
            write!(f, "{}-{}", self.first, self.last)
        }
    }
}

/// Written as a policy writes it (`5432`, `8000-8099`), wherever it is sent or saved.
impl serde::Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Read back with the same checks as in a policy.
impl<'de> serde::Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Why a string is not a port or port range.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PortRangeError {
    #[error(
        "`{}` is not a port or port range; expected a number 1-65535 or a range like `8000-8099`",
        .0.escape_debug()
    )]
    Malformed(String),
    #[error("port {0} is out of range; ports are 1-65535")]
    OutOfRange(String),
    #[error("port range {first}-{last} is reversed; write {last}-{first}")]
    Reversed { first: u16, last: u16 },
}

impl FromStr for PortRange {
    type Err = PortRangeError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let malformed = || PortRangeError::Malformed(text.to_owned());
        let (first, last) = text.split_once('-').unwrap_or((text, text));
        let first = parse_port(first).ok_or_else(malformed)?;
        let last = parse_port(last).ok_or_else(malformed)?;
        let (first, last) = (first?, last?);
        if first > last {
            return Err(PortRangeError::Reversed { first, last });
        }
        Ok(PortRange { first, last })
    }
}

/// `None` when `text` is not a decimal number at all; `Some(Err)` when it is
/// one but not a usable port, so the message can say which.
fn parse_port(text: &str) -> Option<Result<u16, PortRangeError>> {
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let out_of_range = || PortRangeError::OutOfRange(text.to_owned());
    Some(match text.parse::<u16>() {
        Ok(0) | Err(_) => Err(out_of_range()),
        Ok(port) => Ok(port),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(first: u16, last: u16) -> PortRange {
        PortRange { first, last }
    }

    #[test]
    fn valid() {
        let cases = [
            ("5432", range(5432, 5432), "5432"),
            ("1", range(1, 1), "1"),
            ("65535", range(65535, 65535), "65535"),
            ("8000-8099", range(8000, 8099), "8000-8099"),
            ("1-65535", range(1, 65535), "1-65535"),
            ("80-80", range(80, 80), "80"),
            ("0080", range(80, 80), "80"),
        ];
        for (text, want, shown) in cases {
            let got: PortRange = text
                .parse()
                .unwrap_or_else(|e| panic!("{text:?} rejected: {e}"));
            assert_eq!(got, want, "{text:?}");
            assert_eq!(got.to_string(), shown, "{text:?}");
        }
    }

    #[test]
    fn invalid() {
        let malformed = |t: &str| {
            format!(
                "`{t}` is not a port or port range; expected a number 1-65535 or a range like `8000-8099`"
            )
        };
        let cases = [
            ("0", "port 0 is out of range; ports are 1-65535".to_owned()),
            (
                "65536",
                "port 65536 is out of range; ports are 1-65535".to_owned(),
            ),
            (
                "99999999999999999999",
                "port 99999999999999999999 is out of range; ports are 1-65535".to_owned(),
            ),
            (
                "0-80",
                "port 0 is out of range; ports are 1-65535".to_owned(),
            ),
            (
                "80-70000",
                "port 70000 is out of range; ports are 1-65535".to_owned(),
            ),
            (
                "9000-8000",
                "port range 9000-8000 is reversed; write 8000-9000".to_owned(),
            ),
            ("", malformed("")),
            ("http", malformed("http")),
            ("-80", malformed("-80")),
            ("80-", malformed("80-")),
            ("1-2-3", malformed("1-2-3")),
            ("+80", malformed("+80")),
            (" 80", malformed(" 80")),
            ("8000 - 8099", malformed("8000 - 8099")),
            ("80.5", malformed("80.5")),
            ("0x50", malformed("0x50")),
            ("８０", malformed("８０")),
        ];
        for (text, want) in cases {
            match text.parse::<PortRange>() {
                Ok(r) => panic!("{text:?} accepted as {r}"),
                Err(e) => assert_eq!(e.to_string(), want, "{text:?}"),
            }
        }
    }
}
