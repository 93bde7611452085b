//! Reads policy YAML into the model. A bad value is reported at its
//! position and reading carries on, so one run lists every mistake; checks
//! that relate one part of the file to another are left to `validate`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use ipnet::IpNet;
use jiff::Timestamp;

use crate::bundle_endpoint::{self, BundleEndpoint, Profile};
use crate::diagnostic::{Diagnostic, Diagnostics, Pos};
use crate::free_text::{FreeTextError, free_text};
use crate::input;
use crate::model::{
    Action, BundleFile, BundleFrom, BundleSource, CgroupPath, Defaults, Domain, Edge, EdgeEnd,
    EdgeId, Mode, Policy, Protocol,
};
use crate::ports::PortRange;
use crate::shared_names;
use crate::spiffe_id::SpiffeId;
use crate::time::{parse_duration, parse_timestamp};
use crate::trust_domain::{TrustDomain, TrustDomainError};
use crate::validate::{self, At, Claim, EdgeEnds, EdgeIdSite, Sites};
use crate::yaml_tree::{self, Items, LoadError, Mapping, Node, Scalar, Tree};

const SUPPORTED_VERSION: u32 = 1;

const POLICY_KEYS: &[&str] = &["version", "defaults", "domains", "federation"];
const DEFAULTS_KEYS: &[&str] = &[
    "unlabeled",
    "external",
    "mode",
    "max_grant_ttl",
    "require_bundles",
];
const DOMAIN_KEYS: &[&str] = &[
    "name",
    "mode",
    "cgroups",
    "endpoints",
    "bundle",
    "bundle_endpoint",
    "bundle_from",
    "attested",
];
const BUNDLE_ENDPOINT_KEYS: &[&str] = &["url", "profile", "endpoint_id"];
const EDGE_KEYS: &[&str] = &[
    "id",
    "from",
    "to",
    "protocol",
    "ports",
    "owner",
    "reason",
    "not_before",
    "expires",
    "ttl",
    "require_bundles",
];

/// The YAML parser loads nested nodes recursively, so a few kilobytes of
/// `- - - - …` would overflow the stack. Every level or two of
/// block nesting costs a column of indentation or of `- `, `? ` and `: `
/// indicators, and a policy needs only a handful of levels, so lines whose
/// content starts further right are refused before the YAML parser runs.
/// The parser itself limits flow nesting (`[[[…`).
const MAX_NESTING_COLUMNS: usize = 80;

/// Parses and validates the policy `text`; `file` is only used to label
/// diagnostics. On failure every mistake found is returned, sorted by
/// position.
pub fn parse(file: &str, text: &str) -> Result<Policy, Vec<Diagnostic>> {
    let mut diags = Diagnostics::new(file);
    match read(text, &mut diags) {
        Some(mut policy) if diags.is_empty() => {
            shared_names::share(&mut policy);
            Ok(policy)
        }
        _ => Err(diags.into_sorted()),
    }
}

/// Returns `None` only after reporting why.
fn read(text: &str, diags: &mut Diagnostics) -> Option<Policy> {
    // Some editors start a UTF-8 file with a byte order mark; it is no part of the text, and
    // columns count from the first character shown, after it.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if let Some((at, message)) = input::check(text) {
        diags.error(at, message);
        return None;
    }
    if is_blank(text) {
        diags.error(Pos::START, "policy is empty");
        return None;
    }
    if let Some(at) = too_deep(text) {
        diags.error(
            at,
            format!(
                "nesting is too deep: a policy never needs more than {MAX_NESTING_COLUMNS} columns of indentation"
            ),
        );
        return None;
    }
    let second = second_document(text);
    if let Some(at) = second {
        diags.error(
            at,
            "a policy file must hold exactly one YAML document, but a second one starts here",
        );
    }
    let (loaded, federation, mut sites) = load(text, diags);
    let tree = match loaded {
        Ok(tree) => tree,
        Err(error) => {
            report_load_error(text, error, diags);
            return None;
        }
    };
    if second.is_none()
        && let Some((at, message)) = unread_rest(text, &tree)
    {
        diags.error(at, message);
        return None;
    }
    let policy = read_policy(text, tree.root(), federation, &mut sites, diags);
    validate::check(&sites, diags);
    policy
}

/// From this size on, the YAML parser (the larger half of the work) runs on a second thread
/// while this one reads the edges it hands over: a policy of 100,000 edges then loads in
/// little more than the parser's time. A smaller one is read faster than a thread starts.
const LOAD_ALONGSIDE_BYTES: usize = 256 << 10;

/// Batches of `federation` entries the loader may hand over before they are read: bounds
/// the memory they hold.
const BATCHES_IN_FLIGHT: usize = 4;

/// Loads `text`, reading the `federation` entries as the loader hands them over.
fn load<'f>(
    text: &str,
    diags: &Diagnostics<'f>,
) -> (Result<Tree, LoadError>, Federation<'f>, Sites) {
    if text.len() >= LOAD_ALONGSIDE_BYTES
        && let Some(loaded) = load_alongside(text, diags)
    {
        return loaded;
    }
    let mut federation = Federation::new(diags.for_same_file());
    let mut sites = Sites::default();
    let loaded = yaml_tree::load(text, "federation", |entries| {
        federation.read_all(&entries, text, &mut sites);
    });
    (loaded, federation, sites)
}

/// Like `load`, but parses on a second thread; `None` when none can be started. The edges
/// are read here, so that they and their sites are allocated by this thread, whose memory
/// what comes after parsing reuses once the sites are dropped.
fn load_alongside<'f>(
    text: &str,
    diags: &Diagnostics<'f>,
) -> Option<(Result<Tree, LoadError>, Federation<'f>, Sites)> {
    thread::scope(|scope| {
        let (send, receive) = mpsc::sync_channel::<Items>(BATCHES_IN_FLIGHT);
        let loader = thread::Builder::new()
            .spawn_scoped(scope, move || {
                yaml_tree::load(text, "federation", |entries| {
                    // Fails only when reading has panicked; the panic goes on once
                    // loading ends and the scope is left.
                    let _ = send.send(entries);
                })
            })
            .ok()?;
        let mut federation = Federation::new(diags.for_same_file());
        let mut sites = Sites::default();
        for entries in receive {
            federation.read_all(&entries, text, &mut sites);
        }
        let loaded = loader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        Some((loaded, federation, sites))
    })
}

/// Lines as the YAML parser counts them: `\n`, `\r\n` and a lone `\r`
/// each end one.
fn yaml_lines(text: &str) -> impl Iterator<Item = &str> {
    text.split('\n')
        .flat_map(|line| line.strip_suffix('\r').unwrap_or(line).split('\r'))
}

fn is_blank(text: &str) -> bool {
    yaml_lines(text).all(|line| {
        let line = line.trim();
        line.is_empty() || line.starts_with('#') || line == "---" || line == "..."
    })
}

fn too_deep(text: &str) -> Option<Pos> {
    yaml_lines(text).enumerate().find_map(|(index, line)| {
        // Trailing blanks and comments nest nothing, so only indentation and
        // indicators followed by an indicator or content count.
        let mut nesting = 0;
        let mut columns = 0;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            let indicator = matches!(c, '-' | '?' | ':')
                && chars.peek().is_none_or(|next| matches!(next, ' ' | '\t'));
            if indicator {
                columns += 1;
                nesting = columns;
            } else if matches!(c, ' ' | '\t') {
                columns += 1;
            } else {
                if c != '#' {
                    nesting = columns;
                }
                break;
            }
        }
        (nesting > MAX_NESTING_COLUMNS).then_some(Pos {
            line: index + 1,
            column: MAX_NESTING_COLUMNS + 1,
        })
    })
}

/// The YAML loader reads the first document and ignores the rest, which
/// would let half a policy go unenforced. A document marker at the start of
/// a line cannot occur inside a scalar, so scanning lines is enough.
fn second_document(text: &str) -> Option<Pos> {
    let mut has_content = false;
    let mut ended = false;
    for (index, line) in yaml_lines(text).enumerate() {
        let at = Pos {
            line: index + 1,
            column: 1,
        };
        if let Some(rest) = after_marker(line, "---") {
            if has_content || ended {
                return Some(at);
            }
            has_content = !is_blank(rest);
        } else if after_marker(line, "...").is_some() {
            ended = has_content;
        } else if is_blank(line) || (line.starts_with('%') && !has_content && !ended) {
            continue;
        } else if ended {
            return Some(at);
        } else {
            has_content = true;
        }
    }
    None
}

/// The YAML parser ends the document where the top-level mapping ends and ignores what follows
/// without an error: after an indented first key, a line further left (` version: 1` then
/// `defaults: ...`). (A NUL, which the YAML scanner takes for the end of the text, never
/// gets here: `input::check` refuses it first.) Whatever is not blank after the mapping's end is reported, before it is silently dropped.
fn unread_rest(text: &str, tree: &Tree) -> Option<(Pos, String)> {
    let end = tree.end();
    let mut rest = text.chars().skip(end).peekable();
    // A flow mapping's end is at its `}`.
    let brace = rest.next_if_eq(&'}').is_some();
    let rest: String = rest.collect();
    if is_blank(&rest) {
        return None;
    }
    let mut unread = end + usize::from(brace);
    let mut in_comment = false;
    let mut rest = rest.chars().peekable();
    while let Some(c) = rest.next_if(|&c| in_comment || c.is_whitespace() || c == '#') {
        in_comment = (in_comment || c == '#') && !matches!(c, '\n' | '\r');
        unread += 1;
    }
    rest.next()?;
    let message = format!(
        "the policy's top-level mapping ends before this, so the YAML parser would ignore the rest \
         of the file; every top-level key must start in the column of the first ({})",
        mapping_pos(&tree.root()).column
    );
    Some((pos_of_char(text, unread), message))
}

/// The position of the `index`th character, counting lines as the YAML parser does.
fn pos_of_char(text: &str, index: usize) -> Pos {
    let mut at = Pos::START;
    let mut chars = text.chars().take(index).peekable();
    while let Some(c) = chars.next() {
        if c == '\n' || (c == '\r' && chars.peek() != Some(&'\n')) {
            at = Pos {
                line: at.line + 1,
                column: 1,
            };
        } else if c != '\r' {
            at.column += 1;
        }
    }
    at
}

fn after_marker<'l>(line: &'l str, marker: &str) -> Option<&'l str> {
    line.strip_prefix(marker)
        .filter(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

fn report_load_error(text: &str, error: LoadError, diags: &mut Diagnostics) {
    let (at, message) = match error {
        LoadError::TopLevelMustBeMapping(at) => (
            at,
            format!(
                "a policy must be a YAML mapping with the keys {}",
                POLICY_KEYS.join(", ")
            ),
        ),
        LoadError::UnexpectedAnchor(at) => (
            at,
            "YAML anchors and aliases are not supported in policy files".to_owned(),
        ),
        LoadError::MappingKeyMustBeScalar(at) => (
            at,
            "mapping keys must be plain names, not lists or mappings".to_owned(),
        ),
        LoadError::UnexpectedTag(at) => {
            (at, "YAML tags are not supported in policy files".to_owned())
        }
        LoadError::Scan(at, info) => (at, info),
        LoadError::DuplicateKey {
            key,
            pos,
            first_line,
        } => {
            diags.error(
                pos,
                format!(
                    "duplicate key `{}` (first defined at line {first_line})",
                    key.escape_debug(),
                ),
            );
            return;
        }
    };
    diags.error(within(text, at), message);
}

/// At the end of a file without a final newline the parser reports a line
/// past the last one; editors cannot jump there, so the end of the last
/// line is used instead.
fn within(text: &str, at: Pos) -> Pos {
    let mut last = Pos::START;
    for (index, line) in yaml_lines(text).enumerate() {
        last = Pos {
            line: index + 1,
            column: line.chars().count() + 1,
        };
        if last.line == at.line {
            return at;
        }
    }
    last
}

fn read_policy(
    text: &str,
    root: Mapping,
    federation: Federation,
    sites: &mut Sites,
    diags: &mut Diagnostics,
) -> Option<Policy> {
    let root = Value {
        node: Node::Mapping(root),
        pos: mapping_pos(&root),
        what: What::Policy,
        text,
    };
    let top = Fields::new(&root, "policy", POLICY_KEYS, diags)?;
    let version = top
        .required(
            "version",
            "policy",
            "write `version: 1` at the top of the file",
            diags,
        )
        .and_then(|v| read_version(&v, diags));
    let defaults = match top.get("defaults") {
        Some(v) => read_defaults(&v, diags),
        None => Some(Defaults::default()),
    };
    let domains: Vec<Domain> = top
        .get("domains")
        .and_then(|v| v.items(What::Entry("domains"), diags))
        .into_iter()
        .flatten()
        .filter_map(|v| read_domain(&v, sites, diags))
        .collect();
    // The loader handed `federation`'s entries to `federation` as it reached them; only a
    // `federation` that is not a list is left to report.
    if let Some(v) = top.get("federation")
        && v.node.as_sequence().is_none()
    {
        v.wrong_kind("a list", diags);
    }
    // Edges are still read against the built-in defaults when `defaults` is broken, so that
    // their own mistakes are reported in the same run.
    let edge_defaults = defaults.clone().unwrap_or_default();
    let federation = federation.finish(edge_defaults.require_bundles, sites, diags);
    Some(Policy {
        version: version?,
        defaults: defaults?,
        domains,
        federation,
    })
}

fn read_version(v: &Value, diags: &mut Diagnostics) -> Option<u32> {
    let scalar = v.scalar("an integer", diags)?;
    let text = scalar.as_str();
    let unsigned = text.strip_prefix(['-', '+']).unwrap_or(text);
    let is_integer = !unsigned.is_empty() && unsigned.bytes().all(|b| b.is_ascii_digit());
    if !scalar.is_plain() || !is_integer {
        v.wrong_kind("an integer", diags);
        return None;
    }
    if text.parse::<u32>() == Ok(SUPPORTED_VERSION) {
        return Some(SUPPORTED_VERSION);
    }
    diags.error(
        v.pos,
        format!(
            "unsupported policy version {text} (this enforcer understands version {SUPPORTED_VERSION})"
        ),
    );
    None
}

fn read_defaults(v: &Value, diags: &mut Diagnostics) -> Option<Defaults> {
    let fields = Fields::new(v, "defaults", DEFAULTS_KEYS, diags)?;
    let action = |key: &'static str, diags: &mut Diagnostics| match fields.get(key) {
        Some(v) => read_keyword(&v, "`allow` or `deny`", diags, |text| match text {
            "allow" => Some(Action::Allow),
            "deny" => Some(Action::Deny),
            _ => None,
        }),
        None => Some(Action::default()),
    };
    let unlabeled = action("unlabeled", diags);
    let external = action("external", diags);
    let mode = optional(&fields, "mode", diags, read_mode);
    let max_grant_ttl = optional(&fields, "max_grant_ttl", diags, read_duration);
    let require_bundles = optional(&fields, "require_bundles", diags, read_bool);
    Some(Defaults {
        unlabeled: unlabeled?,
        external: external?,
        mode: mode?.unwrap_or_default(),
        max_grant_ttl: max_grant_ttl?.map_or(Defaults::DEFAULT_MAX_GRANT_TTL, |ttl| ttl.value),
        require_bundles: require_bundles?.is_some_and(|r| r.value),
    })
}

fn read_bool(v: &Value, diags: &mut Diagnostics) -> Option<At<bool>> {
    let value = read_keyword(v, "`true` or `false`", diags, |text| match text {
        "true" => Some(true),
        "false" => Some(false),
        _ => None,
    })?;
    Some(At { value, pos: v.pos })
}

fn read_bundle_source(v: &Value, diags: &mut Diagnostics) -> Option<At<BundleSource>> {
    let value = read_keyword(v, "`workload_api`", diags, |text| match text {
        "workload_api" => Some(BundleSource::WorkloadApi),
        _ => None,
    })?;
    Some(At { value, pos: v.pos })
}

fn read_mode(v: &Value, diags: &mut Diagnostics) -> Option<Mode> {
    read_keyword(v, "`enforce` or `audit`", diags, |text| match text {
        "enforce" => Some(Mode::Enforce),
        "audit" => Some(Mode::Audit),
        _ => None,
    })
}

fn read_domain(v: &Value, sites: &mut Sites, diags: &mut Diagnostics) -> Option<Domain> {
    let fields = Fields::new(v, "domain", DOMAIN_KEYS, diags)?;
    let name = fields
        .required(
            "name",
            "domain",
            "every domain needs a trust domain name",
            diags,
        )
        .and_then(|v| read_parsed::<TrustDomain>(&v, "a trust domain name", diags));
    let mode = optional(&fields, "mode", diags, read_mode);
    let cgroups = read_list(&fields, "cgroups", "a cgroup path", diags, |text| {
        CgroupPath::from_str(text).map_err(|e| e.to_string())
    });
    let endpoints = read_list(
        &fields,
        "endpoints",
        "an IP address or prefix",
        diags,
        parse_endpoint,
    );
    let bundle = optional(&fields, "bundle", diags, |v, diags| {
        read_with(v, "a file path", diags, parse_bundle_path)
    });
    let endpoint = optional(&fields, "bundle_endpoint", diags, read_bundle_endpoint);
    let bundle_from = optional(&fields, "bundle_from", diags, read_bundle_source);
    let attested = optional(&fields, "attested", diags, read_bool);
    // A broken `bundle`, `bundle_endpoint`, `bundle_from` or `attested` is reported; the
    // domain is kept so that edges naming it are not also reported as naming an unknown
    // domain.
    let (bundle, endpoint, bundle_from, attested) = (
        bundle.flatten(),
        endpoint.flatten(),
        bundle_from.flatten(),
        attested.flatten(),
    );
    if let (Some(name), Some(endpoint)) = (&name, &endpoint) {
        check_bundle_endpoint(&name.value, bundle.is_some(), endpoint, diags);
    }
    // A `bundle` beside a `bundle_endpoint` is its bootstrap; beside `bundle_from` it would be
    // a second source.
    if let Some(from) = &bundle_from
        && (bundle.is_some() || endpoint.is_some())
    {
        diags.error(
            from.pos,
            "a domain's bundle comes from one place: remove `bundle_from`, or `bundle` and \
             `bundle_endpoint`",
        );
    }
    if let Some(attested) = attested.as_ref().filter(|a| a.value) {
        if bundle.is_none() && bundle_from.is_none() {
            diags.error(
                attested.pos,
                "an attested domain needs a `bundle` or `bundle_from`: attestation checks SVIDs against it",
            );
        }
        if let Some(first) = cgroups.first() {
            diags.error(
                first.pos,
                "an attested domain gets its cgroups from attestation; remove `cgroups` or `attested`",
            );
        }
    }
    let name = name?;
    sites.domains.push(name.clone());
    sites.cgroups.extend(cgroups.iter().map(|item| Claim {
        domain: name.value.clone(),
        item: item.clone(),
    }));
    sites.endpoints.extend(endpoints.iter().map(|item| Claim {
        domain: name.value.clone(),
        item: item.clone(),
    }));
    if bundle.is_some() || endpoint.is_some() || bundle_from.is_some() {
        sites.bundled.push(name.value.clone());
    }
    Some(Domain {
        name: name.value,
        mode: mode?,
        cgroups: cgroups.into_iter().map(|c| c.value).collect(),
        endpoints: endpoints.into_iter().map(|e| e.value).collect(),
        bundle: bundle.map(|b| BundleFile {
            path: b.value,
            line: b.pos.line,
            column: b.pos.column,
        }),
        bundle_endpoint: endpoint,
        bundle_from: bundle_from.map(|from| BundleFrom {
            source: from.value,
            line: from.pos.line,
            column: from.pos.column,
        }),
        attested: attested.is_some_and(|a| a.value),
    })
}

/// `bundle_endpoint: {url, profile, endpoint_id}`; `endpoint_id` belongs to `https_spiffe`
/// alone.
fn read_bundle_endpoint(v: &Value, diags: &mut Diagnostics) -> Option<BundleEndpoint> {
    let fields = Fields::new(v, "bundle_endpoint", BUNDLE_ENDPOINT_KEYS, diags)?;
    let url = fields
        .required(
            "url",
            "bundle_endpoint",
            "the https:// URL the domain's bundle is fetched from",
            diags,
        )
        .and_then(|u| read_with(&u, "an https:// URL", diags, bundle_endpoint::parse_url));
    let profile = fields
        .required(
            "profile",
            "bundle_endpoint",
            "`https_web` or `https_spiffe` says how the endpoint is authenticated",
            diags,
        )
        .and_then(|p| {
            read_keyword(
                &p,
                "`https_web` or `https_spiffe`",
                diags,
                |text| match text {
                    "https_web" => Some(false),
                    "https_spiffe" => Some(true),
                    _ => None,
                },
            )
        });
    let id = fields.get("endpoint_id");
    let endpoint_id = match (profile?, id) {
        (false, Some(id)) => {
            diags.error(
                id.pos,
                "`endpoint_id` belongs to profile `https_spiffe`; an `https_web` endpoint is \
                 authenticated by its Web PKI certificate",
            );
            return None;
        }
        (false, None) => None,
        (true, None) => {
            fields.required(
                "endpoint_id",
                "a bundle_endpoint with profile `https_spiffe`",
                "the SPIFFE ID the endpoint server's SVID must carry",
                diags,
            );
            return None;
        }
        (true, Some(id)) => Some(read_parsed::<SpiffeId>(&id, "a SPIFFE ID", diags)?),
    };
    let url = url?;
    Some(BundleEndpoint {
        url: url.value,
        profile: match endpoint_id {
            None => Profile::HttpsWeb,
            Some(id) => Profile::HttpsSpiffe {
                endpoint_id: id.value,
            },
        },
        line: v.pos.line,
        column: v.pos.column,
    })
}

/// An `https_spiffe` endpoint is authenticated with the domain's own bundle, so the first
/// fetch needs one the operator supplied (the `bundle` file), and the endpoint's SVID must be
/// of this domain: an SVID of another domain could not be checked with this domain's bundle.
fn check_bundle_endpoint(
    domain: &TrustDomain,
    has_bundle: bool,
    endpoint: &BundleEndpoint,
    diags: &mut Diagnostics,
) {
    let Profile::HttpsSpiffe { endpoint_id } = &endpoint.profile else {
        return;
    };
    let at = Pos {
        line: endpoint.line,
        column: endpoint.column,
    };
    if !has_bundle {
        diags.error(
            at,
            "a bundle_endpoint with profile `https_spiffe` needs a `bundle` file: the bootstrap \
             bundle that authenticates the endpoint until its first fetch",
        );
    }
    if &endpoint_id.domain != domain {
        diags.error(
            at,
            format!(
                "`endpoint_id` {endpoint_id} is not in trust domain {domain}: the endpoint's SVID \
                 is checked against this domain's bundle"
            ),
        );
    }
}

/// The policy's edges, read one at a time as the loader reaches them, so that a `federation`
/// list of 100,000 edges is never held as YAML all at once.
struct Federation<'f> {
    edges: Vec<Arc<Edge>>,
    /// The mistakes in the edges, reported after those in the rest of the policy (as when
    /// edges were read last), and only if the whole file loads.
    diags: Diagnostics<'f>,
    /// `defaults` may come after `federation`, so the edges without their own
    /// `require_bundles` take its value only once the whole file is read: these are the
    /// indexes of those edges, and of their `Sites::edges`, each with where the edge starts.
    defaulted_edges: Vec<usize>,
    defaulted_sites: Vec<(usize, Pos)>,
    /// One copy of each trust domain name (by how it is written) and of each free text read:
    /// 100,000 edges name the same few thousand domains, and owners and reasons repeat, so
    /// sharing them saves a parse and an allocation per value and leaves `shared_names`
    /// nothing to free.
    domains: HashMap<Box<str>, TrustDomain>,
    texts: HashSet<Arc<str>>,
}

impl<'f> Federation<'f> {
    fn new(diags: Diagnostics<'f>) -> Self {
        Self {
            edges: Vec::new(),
            diags,
            defaulted_edges: Vec::new(),
            defaulted_sites: Vec::new(),
            domains: HashMap::new(),
            texts: HashSet::new(),
        }
    }

    fn read_all(&mut self, entries: &Items, text: &str, sites: &mut Sites) {
        for entry in entries.iter() {
            read_edge(
                &Value::item(entry, What::Entry("federation"), text),
                self,
                sites,
            );
        }
    }

    /// The edges, with `require_bundles` the default for those that do not say.
    fn finish(
        mut self,
        require_bundles: bool,
        sites: &mut Sites,
        diags: &mut Diagnostics,
    ) -> Vec<Arc<Edge>> {
        diags.append(self.diags);
        if require_bundles {
            for index in self.defaulted_edges {
                // Nothing else holds the edges yet.
                if let Some(edge) = self.edges.get_mut(index).and_then(Arc::get_mut) {
                    edge.require_bundles = true;
                }
            }
            for (index, pos) in self.defaulted_sites {
                if let Some(site) = sites.edges.get_mut(index) {
                    site.require_bundles = Some(pos);
                }
            }
        }
        self.edges
    }
}

/// Reads one `federation` entry into `federation`; `None` when it is not a usable edge, which
/// is reported.
fn read_edge(v: &Value, federation: &mut Federation, sites: &mut Sites) -> Option<()> {
    let diags = &mut federation.diags;
    let fields = Fields::new(v, "edge", EDGE_KEYS, diags)?;
    let id = optional(&fields, "id", diags, |v, diags| {
        read_parsed::<EdgeId>(v, "an edge id", diags)
    });
    let required = |key: &'static str, why: &str, diags: &mut Diagnostics| {
        fields.required(key, "edge", why, diags)
    };
    let from = required(
        "from",
        "every edge needs the trust domain that starts the traffic",
        diags,
    )
    .and_then(|v| read_trust_domain(&v, &mut federation.domains, diags));
    let to = required(
        "to",
        "every edge needs the trust domain that receives the traffic",
        diags,
    )
    .and_then(|v| read_trust_domain(&v, &mut federation.domains, diags));
    let protocol = required(
        "protocol",
        "every edge needs a protocol: tcp, udp or any",
        diags,
    )
    .and_then(|v| {
        read_keyword(&v, "`tcp`, `udp` or `any`", diags, |text| match text {
            "tcp" => Some(Protocol::Tcp),
            "udp" => Some(Protocol::Udp),
            "any" => Some(Protocol::Any),
            _ => None,
        })
    });
    let ports = required(
        "ports",
        "every edge needs the destination ports it allows",
        diags,
    )
    .and_then(|v| read_ports(&v, diags));
    let mut text = |key: &'static str, why: &str, diags: &mut Diagnostics| {
        required(key, why, diags).and_then(|v| read_text(&v, why, &mut federation.texts, diags))
    };
    let owner = text("owner", "every edge needs an accountable owner", diags);
    let reason = text(
        "reason",
        "every edge needs a reason explaining why the traffic is allowed",
        diags,
    );
    let not_before = optional(&fields, "not_before", diags, read_timestamp);
    let end = read_edge_end(&fields, diags);
    // `None` leaves it to `defaults`, which `Federation::finish` applies.
    let require_bundles = optional(&fields, "require_bundles", diags, read_bool)?;
    if let (Some(Some(not_before)), Some(Some(end))) = (&not_before, &end) {
        check_window(not_before, end, diags);
    }
    if require_bundles.is_none() {
        federation.defaulted_sites.push((sites.edges.len(), v.pos));
    }
    sites.edges.push(EdgeEnds {
        from: from.clone(),
        to: to.clone(),
        require_bundles: require_bundles
            .as_ref()
            .and_then(|r| r.value.then_some(r.pos)),
    });
    let id = match (id?, &from, &to, protocol, &ports) {
        (Some(id), ..) => Some(EdgeIdSite { id, explicit: true }),
        (None, Some(from), Some(to), Some(protocol), Some(ports)) => Some(EdgeIdSite {
            id: At {
                value: EdgeId::derived(&from.value, &to.value, protocol, ports),
                pos: v.pos,
            },
            explicit: false,
        }),
        _ => None,
    }?;
    sites.edge_ids.push(id.clone());
    let edge = Edge {
        id: id.id.value,
        from: from?.value,
        to: to?.value,
        protocol: protocol?,
        ports: ports?,
        owner: owner?,
        reason: reason?,
        not_before: not_before?.map(|t| t.value),
        end: end?.map(|end| end.value),
        require_bundles: require_bundles.as_ref().is_some_and(|r| r.value),
    };
    if require_bundles.is_none() {
        federation.defaulted_edges.push(federation.edges.len());
    }
    federation.edges.push(Arc::new(edge));
    Some(())
}

/// `expires` and `ttl` are two ways of ending the same edge, so at most one
/// may be given; the later of the two is reported.
fn read_edge_end(fields: &Fields, diags: &mut Diagnostics) -> Option<Option<At<EdgeEnd>>> {
    let expires = optional(fields, "expires", diags, read_timestamp);
    let ttl = optional(fields, "ttl", diags, read_duration);
    if let (Some(expires), Some(ttl)) = (fields.get("expires"), fields.get("ttl")) {
        diags.error(
            expires.pos.max(ttl.pos),
            "an edge can have `expires` or `ttl`, not both: `expires` ends it at a fixed time, `ttl` a fixed time after the edge is applied",
        );
        return None;
    }
    let at = |value, pos| At { value, pos };
    match (expires?, ttl?) {
        (Some(t), _) => Some(Some(at(EdgeEnd::At(t.value), t.pos))),
        (_, Some(d)) => Some(Some(at(EdgeEnd::Ttl(d.value), d.pos))),
        (None, None) => Some(None),
    }
}

/// An edge that ends before it starts would load and never allow anything,
/// which is surely not what its author meant.
fn check_window(not_before: &At<Timestamp>, end: &At<EdgeEnd>, diags: &mut Diagnostics) {
    if let EdgeEnd::At(expires) = end.value
        && not_before.value >= expires
    {
        diags.error(
            not_before.pos,
            format!(
                "`not_before` ({}) must be before `expires` ({expires}, line {}); the edge would never allow anything",
                not_before.value, end.pos.line
            ),
        );
    }
}

/// `Some(None)` when `key` is absent; `None` (reported) when its value is
/// unusable.
fn optional<T>(
    fields: &Fields,
    key: &'static str,
    diags: &mut Diagnostics,
    read: impl FnOnce(&Value, &mut Diagnostics) -> Option<T>,
) -> Option<Option<T>> {
    match fields.get(key) {
        Some(v) => read(&v, diags).map(Some),
        None => Some(None),
    }
}

fn read_timestamp(v: &Value, diags: &mut Diagnostics) -> Option<At<Timestamp>> {
    read_with(v, "a timestamp", diags, parse_timestamp)
}

fn read_duration(v: &Value, diags: &mut Diagnostics) -> Option<At<Duration>> {
    read_with(v, "a duration", diags, parse_duration)
}

fn read_ports(v: &Value, diags: &mut Diagnostics) -> Option<Vec<PortRange>> {
    if v.node.as_sequence().is_some_and(|s| s.is_empty()) {
        diags.error(v.pos, "`ports` must list at least one port or port range");
        return None;
    }
    let ports = v
        .items(What::Entry("ports"), diags)?
        .filter_map(|item| read_parsed::<PortRange>(&item, "a port or port range", diags))
        .map(|port| port.value)
        .collect();
    Some(ports)
}

/// Reads an optional list of scalars, keeping the items that parse.
fn read_list<T>(
    fields: &Fields,
    key: &'static str,
    expected: &str,
    diags: &mut Diagnostics,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Vec<At<T>> {
    let Some(items) = fields
        .get(key)
        .and_then(|v| v.items(What::Entry(key), diags))
    else {
        return Vec::new();
    };
    items
        .filter_map(|item| {
            let text = item.scalar(expected, diags)?.as_str();
            parse(text)
                .map(|value| At {
                    value,
                    pos: item.pos,
                })
                .map_err(|message| diags.error(item.pos, message))
                .ok()
        })
        .collect()
}

fn read_parsed<T>(v: &Value, expected: &str, diags: &mut Diagnostics) -> Option<At<T>>
where
    T: FromStr,
    T::Err: ToString,
{
    read_with(v, expected, diags, |text| {
        text.parse().map_err(|e: T::Err| e.to_string())
    })
}

fn read_with<T>(
    v: &Value,
    expected: &str,
    diags: &mut Diagnostics,
    parse: impl FnOnce(&str) -> Result<T, String>,
) -> Option<At<T>> {
    let text = v.scalar(expected, diags)?.as_str();
    match parse(text) {
        Ok(value) => Some(At { value, pos: v.pos }),
        Err(message) => {
            diags.error(v.pos, message);
            None
        }
    }
}

fn read_keyword<T>(
    v: &Value,
    expected: &str,
    diags: &mut Diagnostics,
    keyword: impl Fn(&str) -> Option<T>,
) -> Option<T> {
    let found = keyword(v.scalar(expected, diags)?.as_str());
    if found.is_none() {
        v.wrong_kind(expected, diags);
    }
    found
}

/// A trust domain name, parsed once for every edge that writes it the same way (`names`).
fn read_trust_domain(
    v: &Value,
    names: &mut HashMap<Box<str>, TrustDomain>,
    diags: &mut Diagnostics,
) -> Option<At<TrustDomain>> {
    read_with(v, "a trust domain name", diags, |text| {
        if let Some(name) = names.get(text) {
            return Ok(name.clone());
        }
        let name: TrustDomain = text.parse().map_err(|e: TrustDomainError| e.to_string())?;
        names.insert(text.into(), name.clone());
        Ok(name)
    })
}

/// Free text such as `owner` and `reason`: any scalar that makes one line of printable
/// text, trimmed; the copy in `texts` when there is one.
fn read_text(
    v: &Value,
    why: &str,
    texts: &mut HashSet<Arc<str>>,
    diags: &mut Diagnostics,
) -> Option<Arc<str>> {
    let text = match v.node {
        Node::Scalar(scalar) if !is_null(&scalar) => scalar.as_str(),
        Node::Scalar(_) => "",
        _ => {
            v.wrong_kind("a string", diags);
            return None;
        }
    };
    match free_text(text) {
        Ok(text) => Some(match texts.get(text) {
            Some(shared) => Arc::clone(shared),
            None => {
                let text: Arc<str> = text.into();
                texts.insert(Arc::clone(&text));
                text
            }
        }),
        Err(FreeTextError::Empty) => {
            diags.error(v.pos, format!("{} is empty: {why}", v.what));
            None
        }
        Err(err) => {
            diags.error(v.pos, format!("{} {err}", v.what));
            None
        }
    }
}

/// The daemon reads bundles itself, from wherever it runs, so a path relative to the policy
/// file (which the daemon never sees) would be ambiguous.
fn parse_bundle_path(text: &str) -> Result<std::path::PathBuf, String> {
    let path = std::path::Path::new(text);
    if !path.is_absolute() {
        return Err(format!(
            "bundle path `{}` is relative; write it absolute (the daemon reads it, from its own working directory)",
            text.escape_debug()
        ));
    }
    Ok(path.to_owned())
}

fn parse_endpoint(text: &str) -> Result<IpNet, String> {
    let malformed = || {
        format!(
            "`{}` is not an IP address or prefix; expected something like `10.10.0.0/16`, `fd00:10::/64` or `10.10.0.1`",
            text.escape_debug()
        )
    };
    let (address, length) = match text.split_once('/') {
        Some((address, length)) => (address, Some(length)),
        None => (text, None),
    };
    let address: IpAddr = address.parse().map_err(|_| malformed())?;
    let net = match length {
        None => IpNet::from(address),
        Some(length) if !length.is_empty() && length.bytes().all(|b| b.is_ascii_digit()) => {
            let max = if address.is_ipv4() { 32 } else { 128 };
            length
                .parse::<u8>()
                .ok()
                .and_then(|length| IpNet::new(address, length).ok())
                .ok_or_else(|| {
                    format!(
                        "prefix length /{length} in `{text}` is too long; the maximum is /{max}"
                    )
                })?
        }
        Some(_) => return Err(malformed()),
    };
    if net.trunc() != net {
        return Err(format!(
            "{net} has host bits set; did you mean {}?",
            net.trunc()
        ));
    }
    Ok(net)
}

/// A YAML node together with where to report problems with it and how to
/// name it in messages (e.g. "`ports`" or "each `cgroups` entry").
struct Value<'n> {
    node: Node<'n>,
    pos: Pos,
    what: What,
    /// The whole policy text, for the positions the parser does not give.
    text: &'n str,
}

impl<'n> Value<'n> {
    fn wrong_kind(&self, expected: &str, diags: &mut Diagnostics) {
        let hint = match self.node {
            Node::Scalar(s) if is_null(&s) && expected == "a list" => {
                " (write `[]` for an empty list)"
            }
            _ => "",
        };
        diags.error(
            self.pos,
            format!(
                "{} must be {expected}, found {}{hint}",
                self.what,
                describe(&self.node)
            ),
        );
    }

    fn mapping(&self, diags: &mut Diagnostics) -> Option<Mapping<'n>> {
        let mapping = self.node.as_mapping();
        if mapping.is_none() {
            self.wrong_kind("a mapping", diags);
        }
        mapping
    }

    /// A scalar other than null or empty.
    fn scalar(&self, expected: &str, diags: &mut Diagnostics) -> Option<Scalar<'n>> {
        match self.node {
            Node::Scalar(scalar) if !is_null(&scalar) => Some(scalar),
            _ => {
                self.wrong_kind(expected, diags);
                None
            }
        }
    }

    fn items(
        &self,
        item_what: What,
        diags: &mut Diagnostics,
    ) -> Option<impl Iterator<Item = Value<'n>> + use<'n>> {
        let Some(sequence) = self.node.as_sequence() else {
            self.wrong_kind("a list", diags);
            return None;
        };
        let text = self.text;
        Some(
            sequence
                .iter()
                .map(move |node| Value::item(node, item_what, text)),
        )
    }

    /// An item of a list.
    fn item(node: Node<'n>, what: What, text: &'n str) -> Self {
        let pos = match node {
            Node::Scalar(scalar) if is_empty(&scalar) => empty_item_pos(text, scalar.pos()),
            _ => node_pos(&node),
        };
        Value {
            node,
            pos,
            what,
            text,
        }
    }
}

/// How a value is named in messages.
#[derive(Clone, Copy)]
enum What {
    Policy,
    /// The value of a key: "`ports`".
    Key(&'static str),
    /// An item of the list under a key: "each `ports` entry".
    Entry(&'static str),
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        match self {
            What::Policy => f.write_str("the policy"),
            What::Key(key) => write!(f, "`{key}`"),
            What::Entry(key) => write!(f, "each `{key}` entry"),
        }
    }
}

/// The entries of one mapping, with unknown keys already reported.
struct Fields<'n> {
    mapping: Mapping<'n>,
    text: &'n str,
}

impl<'n> Fields<'n> {
    /// `None` (reported) when `value` is not a mapping.
    fn new(
        value: &Value<'n>,
        context: &str,
        known: &[&str],
        diags: &mut Diagnostics,
    ) -> Option<Self> {
        let mapping = value.mapping(diags)?;
        for key in mapping.keys() {
            if !known.contains(&key.as_str()) {
                diags.error(
                    key.pos(),
                    format!(
                        "unknown key `{}` in {context}; expected one of: {}",
                        key.as_str().escape_debug(),
                        known.join(", ")
                    ),
                );
            }
        }
        Some(Self {
            mapping,
            text: value.text,
        })
    }

    fn get(&self, key: &'static str) -> Option<Value<'n>> {
        let (key_node, node) = self.mapping.get(key)?;
        // An empty value has no text of its own; the parser places it at the
        // next token, often on a later line, so the key is the better spot.
        let pos = match node {
            Node::Scalar(scalar) if is_empty(&scalar) => key_node.pos(),
            _ => node_pos(&node),
        };
        Some(Value {
            node,
            pos,
            what: What::Key(key),
            text: self.text,
        })
    }

    /// Reports a missing key at the start of the mapping that lacks it.
    fn required(
        &self,
        key: &'static str,
        subject: &str,
        why: &str,
        diags: &mut Diagnostics,
    ) -> Option<Value<'n>> {
        let value = self.get(key);
        if value.is_none() {
            diags.error(
                mapping_pos(&self.mapping),
                format!("{subject} is missing required key `{key}`: {why}"),
            );
        }
        value
    }
}

fn is_null(scalar: &Scalar) -> bool {
    scalar.is_plain() && matches!(scalar.as_str(), "" | "~" | "null" | "Null" | "NULL")
}

/// The value of `key:` or `-` with nothing after it.
fn is_empty(scalar: &Scalar) -> bool {
    scalar.is_plain() && scalar.as_str().is_empty()
}

/// The parser places an empty list item (a `-` with nothing after it) at
/// the next token: the content of the next item, just past that item's `-`,
/// or whatever ends the list. Only blank space and comments lie between
/// the empty item's `-` and that next `-` or token.
fn empty_item_pos(text: &str, next_token: Pos) -> Pos {
    let lines: Vec<&str> = yaml_lines(text).take(next_token.line).collect();
    for (index, line) in lines.iter().enumerate().rev() {
        let mut code = if index + 1 == next_token.line {
            let before: String = line
                .chars()
                .take(next_token.column.saturating_sub(1))
                .collect();
            let before = before.trim_end();
            before.strip_suffix('-').unwrap_or(before).to_owned()
        } else {
            without_comment(line).to_owned()
        };
        code.truncate(code.trim_end().len());
        if code.ends_with('-') {
            return Pos {
                line: index + 1,
                column: code.chars().count(),
            };
        }
        if !code.is_empty() {
            break;
        }
    }
    next_token
}

fn without_comment(line: &str) -> &str {
    let mut previous = ' ';
    for (at, c) in line.char_indices() {
        if c == '#' && matches!(previous, ' ' | '\t') {
            return line.split_at(at).0;
        }
        previous = c;
    }
    line
}

fn describe(node: &Node) -> String {
    const MAX_SHOWN: usize = 40;
    match node {
        Node::Mapping(_) => "a mapping".to_owned(),
        Node::Sequence(_) => "a list".to_owned(),
        Node::Scalar(s) if is_empty(s) => "an empty value".to_owned(),
        Node::Scalar(s) if is_null(s) => "null".to_owned(),
        Node::Scalar(s) => {
            let text = s.as_str();
            let mut shown: String = text.chars().take(MAX_SHOWN).collect();
            if text.chars().nth(MAX_SHOWN).is_some() {
                shown.push('…');
            }
            let shown = shown.escape_debug();
            if s.is_plain() {
                format!("`{shown}`")
            } else {
                format!("the string `{shown}`")
            }
        }
    }
}

fn node_pos(node: &Node) -> Pos {
    match node {
        Node::Mapping(mapping) => mapping_pos(mapping),
        Node::Sequence(sequence) => sequence.pos(),
        Node::Scalar(scalar) => scalar.pos(),
    }
}

/// A block mapping starts at its first `:`, not its first key, so the
/// first key is used when it comes earlier.
fn mapping_pos(mapping: &Mapping) -> Pos {
    let start = mapping.pos();
    mapping
        .keys()
        .next()
        .map_or(start, |key| start.min(key.pos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pos(line: usize, column: usize) -> Pos {
        Pos { line, column }
    }

    #[test]
    fn endpoints() {
        let ok = |text: &str, want: &str| {
            assert_eq!(
                parse_endpoint(text).map(|net| net.to_string()),
                Ok(want.to_owned()),
                "{text:?}"
            );
        };
        ok("10.10.0.0/16", "10.10.0.0/16");
        ok("10.10.0.1", "10.10.0.1/32");
        ok("0.0.0.0/0", "0.0.0.0/0");
        ok("fd00:10::/64", "fd00:10::/64");
        ok("fd00:0010:0::/64", "fd00:10::/64");
        ok("::1", "::1/128");
        ok("::ffff:10.0.0.0/104", "::ffff:10.0.0.0/104");

        let err = |text: &str, want: &str| {
            assert_eq!(parse_endpoint(text), Err(want.to_owned()), "{text:?}");
        };
        let malformed = |text: &str| {
            format!(
                "`{text}` is not an IP address or prefix; expected something like `10.10.0.0/16`, `fd00:10::/64` or `10.10.0.1`"
            )
        };
        err(
            "10.10.1.0/16",
            "10.10.1.0/16 has host bits set; did you mean 10.10.0.0/16?",
        );
        err(
            "fd00::1/8",
            "fd00::1/8 has host bits set; did you mean fd00::/8?",
        );
        err(
            "10.0.0.0/33",
            "prefix length /33 in `10.0.0.0/33` is too long; the maximum is /32",
        );
        err(
            "::/300",
            "prefix length /300 in `::/300` is too long; the maximum is /128",
        );
        for text in [
            "",
            "/8",
            "10.0.0.0/",
            "10.0.0.0/+8",
            "10.0.0.0/ 8",
            "010.0.0.0/8",
            "10.0.0.0/8/8",
            "fe80::1%eth0",
            "example.org",
        ] {
            err(text, &malformed(text));
        }
    }

    #[test]
    fn nesting_depth_counts_only_structure() {
        let deep = " ".repeat(81);
        assert_eq!(too_deep(&format!("a:\n{deep}b: 1\n")), Some(pos(2, 81)));
        assert_eq!(
            too_deep(&format!("a:\n{}x\n", "- ".repeat(41))),
            Some(pos(2, 81))
        );
        assert_eq!(
            too_deep(&format!("a:\n{}\n", "- ".repeat(41))),
            Some(pos(2, 81))
        );
        assert_eq!(too_deep(&format!("a:\n{}x\n", "- ".repeat(40))), None);
        assert_eq!(too_deep(&format!("a:\n{deep}\n")), None);
        assert_eq!(too_deep(&format!("a:\n{deep}# note\n")), None);
    }

    #[test]
    fn second_documents_are_found() {
        assert_eq!(second_document("a: 1\n"), None);
        assert_eq!(second_document("---\na: 1\n...\n"), None);
        assert_eq!(second_document("%YAML 1.2\n--- # c\na: 1\n"), None);
        assert_eq!(second_document("a: |\n  ---\n"), None);
        assert_eq!(second_document("a: 1\n---\n"), Some(pos(2, 1)));
        assert_eq!(second_document("--- {a: 1}\n--- {b: 1}\n"), Some(pos(2, 1)));
        assert_eq!(second_document("a: 1\n...\n# c\nb: 2\n"), Some(pos(4, 1)));
        assert_eq!(second_document("a: 1\r---\r"), Some(pos(2, 1)));
    }

    #[test]
    fn empty_list_items_are_placed_at_their_dash() {
        let text = "d:\n  - x\n  -   # none\n\n  - y\n";
        assert_eq!(empty_item_pos(text, pos(5, 5)), pos(3, 3));
        let text = "d:\n  - x\n  -\n";
        assert_eq!(empty_item_pos(text, pos(4, 1)), pos(3, 3));
        let text = "d:\n  - -\n    - x\n";
        assert_eq!(empty_item_pos(text, pos(3, 7)), pos(2, 5));
    }

    #[test]
    fn positions_past_the_end_move_to_the_last_line() {
        assert_eq!(within("a: [1\n", pos(2, 1)), pos(2, 1));
        assert_eq!(within("a: [1", pos(2, 1)), pos(1, 6));
        assert_eq!(within("a: [1", pos(1, 3)), pos(1, 3));
    }

    #[test]
    fn found_values_are_described_briefly() {
        let describe_value = |yaml: &str| -> String {
            let tree =
                yaml_tree::load(&format!("k: {yaml}"), "federation", drop).expect("valid YAML");
            let (_, value) = tree.root().get("k").expect("has k");
            describe(&value)
        };
        assert_eq!(describe_value("{a: 1}"), "a mapping");
        assert_eq!(describe_value("[1]"), "a list");
        assert_eq!(describe_value(""), "an empty value");
        assert_eq!(describe_value("~"), "null");
        assert_eq!(describe_value("'~'"), "the string `~`");
        assert_eq!(describe_value("yes"), "`yes`");
        assert_eq!(describe_value("\"a\\tb\""), "the string `a\\tb`");
        assert_eq!(
            describe_value(&"x".repeat(50)),
            format!("`{}…`", "x".repeat(40))
        );
    }
}
