//! Scraping the daemon's `--metrics-addr` with a plain HTTP/1.1 GET, and a strict parser of
//! the Prometheus text exposition format 0.0.4 (written from the format's line grammar, not
//! shared with the daemon), so tests check what a Prometheus server would read.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

/// An HTTP response: status code, headers (names lowercased) and body.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

/// `GET path` on `addr`, reading the whole response (the daemon closes after each).
pub fn http_get(addr: SocketAddr, path: &str) -> HttpResponse {
    let mut stream =
        TcpStream::connect(addr).unwrap_or_else(|e| panic!("connecting to {addr}: {e}"));
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("setting a read timeout");
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
    )
    .expect("sending the request");
    let mut raw = Vec::new();
    stream
        .read_to_end(&mut raw)
        .unwrap_or_else(|e| panic!("reading the response to GET {path}: {e}"));
    let raw = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = raw
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("a response with a header block: {raw:?}"));
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.split(' ').next())
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("an HTTP/1.1 status line: {status_line:?}"));
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if let Some(length) = headers.get("content-length") {
        assert_eq!(
            length.parse::<usize>().ok(),
            Some(body.len()),
            "Content-Length matches the body"
        );
    }
    HttpResponse {
        status,
        headers,
        body: body.to_owned(),
    }
}

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed exposition: each family's HELP and TYPE, and every sample in order.
#[derive(Debug, Default)]
pub struct Exposition {
    pub help: BTreeMap<String, String>,
    pub types: BTreeMap<String, String>,
    pub samples: Vec<Sample>,
}

impl Exposition {
    /// Parses `text`, refusing anything the format does not allow, and also (stricter than
    /// the format, as a good exporter behaves) a sample of a family with no HELP and TYPE
    /// before it, and a family declared twice.
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut exposition = Self::default();
        for (n, line) in text.lines().enumerate() {
            let at = |msg: String| format!("line {}: {msg}: {line:?}", n + 1);
            if line.trim().is_empty() {
                continue;
            }
            if let Some(comment) = line.strip_prefix('#') {
                let mut words = comment.trim_start().splitn(3, ' ');
                match (words.next(), words.next(), words.next()) {
                    (Some("HELP"), Some(name), help) => {
                        check_name(name).map_err(at)?;
                        let help = help.unwrap_or_default().to_owned();
                        if exposition.help.insert(name.into(), help).is_some() {
                            return Err(at(format!("second HELP for {name}")));
                        }
                    }
                    (Some("TYPE"), Some(name), Some(kind)) => {
                        check_name(name).map_err(at)?;
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind)
                        {
                            return Err(at(format!("unknown type {kind}")));
                        }
                        if exposition
                            .samples
                            .iter()
                            .any(|s| family_of(&s.name, &exposition.types) == name)
                        {
                            return Err(at(format!("TYPE for {name} after its samples")));
                        }
                        if exposition.types.insert(name.into(), kind.into()).is_some() {
                            return Err(at(format!("second TYPE for {name}")));
                        }
                    }
                    (Some("TYPE"), ..) => return Err(at("TYPE without a type".into())),
                    // Any other comment is allowed and means nothing.
                    _ => {}
                }
                continue;
            }
            let sample = parse_sample(line).map_err(at)?;
            let family = family_of(&sample.name, &exposition.types);
            if !exposition.types.contains_key(family) || !exposition.help.contains_key(family) {
                return Err(at(format!(
                    "sample of {family}, which has no HELP and TYPE"
                )));
            }
            if exposition
                .samples
                .iter()
                .any(|s| s.name == sample.name && s.labels == sample.labels)
            {
                return Err(at("the same series twice".into()));
            }
            exposition.samples.push(sample);
        }
        Ok(exposition)
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The value of the one sample named `name` with `labels`; `None` if there is none,
    /// a panic if the labels do not pick out one series.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<&Sample> = self.matching(name, labels).collect();
        assert!(
            found.len() <= 1,
            "{name} {labels:?} picks out {} series: {found:?}",
            found.len()
        );
        found.first().map(|s| s.value)
    }
}

/// The family a sample belongs to: itself, or a histogram or summary it is a part of.
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> &'a str {
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = name.strip_suffix(suffix)
            && types
                .get(base)
                .is_some_and(|t| t == "histogram" || (t == "summary" && suffix != "_bucket"))
        {
            return base;
        }
    }
    name
}

/// `[a-zA-Z_:][a-zA-Z0-9_:]*`
fn check_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':');
    if first_ok && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':') {
        Ok(())
    } else {
        Err(format!("invalid metric name {name:?}"))
    }
}

fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line.find(['{', ' ']).ok_or("a sample needs a value")?;
    let name = &line[..name_end];
    check_name(name)?;
    let mut rest = &line[name_end..];
    let mut labels = BTreeMap::new();
    if let Some(inner) = rest.strip_prefix('{') {
        rest = inner;
        loop {
            rest = rest.trim_start();
            if let Some(after) = rest.strip_prefix('}') {
                rest = after;
                break;
            }
            let (key, after) = rest.split_once('=').ok_or("a label needs =")?;
            let key = key.trim();
            if !key
                .chars()
                .next()
                .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            {
                return Err(format!("invalid label name {key:?}"));
            }
            let after = after.strip_prefix('"').ok_or("a label value is quoted")?;
            let mut value = String::new();
            let mut chars = after.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, '\\')) => value.push('\\'),
                        Some((_, '"')) => value.push('"'),
                        Some((_, 'n')) => value.push('\n'),
                        other => return Err(format!("bad escape {other:?}")),
                    },
                    Some((_, c)) => value.push(c),
                    None => return Err("unterminated label value".into()),
                }
            };
            if labels.insert(key.to_owned(), value).is_some() {
                return Err(format!("label {key} twice"));
            }
            rest = after[end + 1..].trim_start();
            if let Some(after) = rest.strip_prefix(',') {
                rest = after;
            } else if !rest.starts_with('}') {
                return Err("labels are separated by commas".into());
            }
        }
    }
    let mut fields = rest.split_whitespace();
    let value = fields.next().ok_or("a sample needs a value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        v => v.parse().map_err(|_| format!("invalid value {v:?}"))?,
    };
    if let Some(timestamp) = fields.next() {
        timestamp
            .parse::<i64>()
            .map_err(|_| format!("invalid timestamp {timestamp:?}"))?;
    }
    if fields.next().is_some() {
        return Err("trailing text after the sample".into());
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_families_labels_and_escapes() {
        let text = "# HELP a_total Things.\n# TYPE a_total counter\n\
                    a_total{x=\"1\",y=\"q\\\"\\\\\\n\"} 3\na_total 4 1700000000000\n\
                    # a comment\n# HELP h Times.\n# TYPE h histogram\n\
                    h_bucket{le=\"+Inf\"} 2\nh_sum 0.5\nh_count 2\n";
        let e = Exposition::parse(text).expect("valid");
        assert_eq!(e.types["a_total"], "counter");
        assert_eq!(e.value("a_total", &[("x", "1")]), Some(3.0));
        assert_eq!(e.samples[0].labels["y"], "q\"\\\n", "escapes are undone");
        assert_eq!(e.value("h_count", &[]), Some(2.0));
        assert_eq!(e.value("h_bucket", &[("le", "+Inf")]), Some(2.0));
    }

    #[test]
    fn refuses_what_the_format_or_a_good_exporter_does_not_allow() {
        for bad in [
            "x 1\n",                                               // no HELP/TYPE
            "# HELP x X.\n# TYPE x counter\nx_total 1\n",          // counter named apart
            "# HELP x X.\n# TYPE x gauge\nx{a=1} 1\n",             // unquoted label
            "# HELP x X.\n# TYPE x gauge\nx{a=\"1\" b=\"2\"} 1\n", // no comma
            "# HELP x X.\n# TYPE x gauge\nx one\n",                // bad value
            "# HELP x X.\n# TYPE x gauge\nx 1\nx 2\n",             // series twice
            "# HELP x X.\n# TYPE x gauge\n# TYPE x gauge\n",       // declared twice
            "# HELP 1x X.\n# TYPE 1x gauge\n1x 1\n",               // bad name
            "# HELP x X.\n# TYPE x wibble\n",                      // bad type
        ] {
            assert!(Exposition::parse(bad).is_err(), "accepted {bad:?}");
        }
    }
}
