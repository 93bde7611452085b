//! The YAML of a policy as a compact tree: every scalar's text in one buffer, every node a
//! few integers in a flat array, read by lightweight handles.
//!
//! This replaces marked-yaml, whose node tree cost a `String` per scalar and a hash map per
//! mapping, hashed every key and dropped it all recursively: for a policy of 100,000 edges
//! that was most of a second and over 400 MB. Here a mapping is its entries in document order
//! (policy mappings have a dozen keys at most, so a linear search beats hashing) and the
//! tree is a handful of vectors, built without recursion and freed without it. The entries
//! of one long top-level list (the policy's edges) are not kept at all: they are handed over
//! a batch at a time as soon as they are complete, so memory follows the batch rather than
//! the file, and the batches can be read on another thread while loading goes on.
//!
//! The loader accepts and refuses exactly what marked-yaml did with `error_on_duplicate_keys`
//! and `prevent_coercion`, at the same positions: policies and their diagnostics do not change.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser, Tag};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use crate::diagnostic::Pos;

/// Why a text could not be loaded, where the problem was found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum LoadError {
    /// The document is something other than a mapping.
    TopLevelMustBeMapping(Pos),
    /// An anchor (or, past one, an alias).
    UnexpectedAnchor(Pos),
    /// A mapping or a sequence used as a mapping key.
    MappingKeyMustBeScalar(Pos),
    UnexpectedTag(Pos),
    /// The YAML parser's own error, with its message.
    Scan(Pos, String),
    /// A key given twice in one mapping: the second `key` and the line of the first.
    DuplicateKey {
        key: String,
        pos: Pos,
        first_line: usize,
    },
}

/// Reads the first YAML document of `text`, which must be a mapping, as marked-yaml did:
/// what follows the first document is not read.
///
/// When the top-level key `streamed` holds a list, its items are not kept in the tree (the
/// list there is empty): they are handed to `on_items`, in order, in batches, as soon as they
/// are complete. Some may have been handed over by the time loading fails.
pub(crate) fn load(
    text: &str,
    streamed: &str,
    on_items: impl FnMut(Items),
) -> Result<Tree, LoadError> {
    let mut builder = Builder {
        arena: Arena::default(),
        open: Vec::new(),
        entries: Vec::new(),
        items: Vec::new(),
        root: None,
        error: None,
        streamed,
        batch: Vec::new(),
        rest: None,
        on_items,
    };
    Parser::new_from_str(text)
        .load(&mut builder, false)
        .map_err(|error| {
            LoadError::Scan(Mark::from(*error.marker()).pos(), error.info().to_owned())
        })?;
    builder.finish()
}

/// A loaded document; its top level is always a mapping.
pub(crate) struct Tree {
    arena: Arena,
    root: u32,
    /// The character (not byte) index at which the top-level mapping ends.
    end: usize,
}

impl Tree {
    pub fn root(&self) -> Mapping<'_> {
        self.arena.mapping(self.root)
    }

    /// The character index at which the top-level mapping ends: a flow mapping's at its `}`,
    /// a block mapping's where the next token starts.
    pub fn end(&self) -> usize {
        self.end
    }
}

/// Consecutive items of the streamed list, and the nodes they are made of.
pub(crate) struct Items {
    arena: Arena,
    items: Vec<NodeId>,
}

impl Items {
    pub fn iter(&self) -> impl Iterator<Item = Node<'_>> {
        self.items.iter().map(|&item| self.arena.node(item))
    }
}

/// The nodes of a tree, or of the part of it built so far.
#[derive(Default)]
struct Arena {
    /// Every scalar's text, one after the other.
    text: String,
    scalars: Vec<ScalarData>,
    containers: Vec<ContainerData>,
    /// The entries of each mapping, one mapping's after the other.
    entries: Vec<Entry>,
    /// The items of each sequence, one sequence's after the other.
    items: Vec<NodeId>,
}

impl Arena {
    fn node(&self, id: NodeId) -> Node<'_> {
        match id {
            NodeId::Scalar(index) => Node::Scalar(self.scalar(index)),
            NodeId::Mapping(index) => Node::Mapping(self.mapping(index)),
            NodeId::Sequence(index) => Node::Sequence(self.sequence(index)),
        }
    }

    fn scalar(&self, index: u32) -> Scalar<'_> {
        let data = &self.scalars[index as usize];
        Scalar {
            text: self.text_of(data),
            plain: data.plain,
            pos: data.mark.pos(),
        }
    }

    fn text_of(&self, scalar: &ScalarData) -> &str {
        &self.text[scalar.start as usize..scalar.end as usize]
    }

    fn mapping(&self, index: u32) -> Mapping<'_> {
        let data = &self.containers[index as usize];
        Mapping {
            arena: self,
            entries: &self.entries[data.children()],
            pos: data.mark.pos(),
        }
    }

    fn sequence(&self, index: u32) -> Sequence<'_> {
        let data = &self.containers[index as usize];
        Sequence {
            arena: self,
            items: &self.items[data.children()],
            pos: data.mark.pos(),
        }
    }

    fn with_same_capacity(&self) -> Self {
        Self {
            text: String::with_capacity(self.text.capacity()),
            scalars: Vec::with_capacity(self.scalars.capacity()),
            containers: Vec::with_capacity(self.containers.capacity()),
            entries: Vec::with_capacity(self.entries.capacity()),
            items: Vec::with_capacity(self.items.capacity()),
        }
    }

    fn key_text(&self, key: u32) -> &str {
        self.text_of(&self.scalars[key as usize])
    }

    fn container(&mut self, mark: Mark, first: usize, len: usize) -> u32 {
        self.containers.push(ContainerData {
            first: to_u32(first),
            len: to_u32(len),
            mark,
        });
        to_u32(self.containers.len() - 1)
    }
}

/// A node of a [`Tree`].
#[derive(Clone, Copy)]
pub(crate) enum Node<'t> {
    Scalar(Scalar<'t>),
    Mapping(Mapping<'t>),
    Sequence(Sequence<'t>),
}

impl<'t> Node<'t> {
    pub fn as_mapping(&self) -> Option<Mapping<'t>> {
        match self {
            Node::Mapping(mapping) => Some(*mapping),
            _ => None,
        }
    }

    pub fn as_sequence(&self) -> Option<Sequence<'t>> {
        match self {
            Node::Sequence(sequence) => Some(*sequence),
            _ => None,
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Scalar<'t> {
    text: &'t str,
    plain: bool,
    pos: Pos,
}

impl<'t> Scalar<'t> {
    pub fn as_str(&self) -> &'t str {
        self.text
    }

    /// Written without quotes or block indicators, so `null`, `~` or nothing at all may
    /// mean null, and `1` may be a number; a quoted `"1"` is always a string.
    pub fn is_plain(&self) -> bool {
        self.plain
    }

    /// Where the scalar starts: at its first character, or its opening quote.
    pub fn pos(&self) -> Pos {
        self.pos
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Mapping<'t> {
    arena: &'t Arena,
    entries: &'t [Entry],
    pos: Pos,
}

impl<'t> Mapping<'t> {
    /// The keys, in document order.
    pub fn keys(&self) -> impl Iterator<Item = Scalar<'t>> + use<'t> {
        let arena = self.arena;
        self.entries
            .iter()
            .map(move |entry| arena.scalar(entry.key))
    }

    pub fn get(&self, key: &str) -> Option<(Scalar<'t>, Node<'t>)> {
        let entry = self
            .entries
            .iter()
            .find(|entry| self.arena.key_text(entry.key) == key)?;
        Some((self.arena.scalar(entry.key), self.arena.node(entry.value)))
    }

    /// Where the mapping starts: a flow mapping's `{`, but a block mapping's first `:`.
    pub fn pos(&self) -> Pos {
        self.pos
    }
}

#[derive(Clone, Copy)]
pub(crate) struct Sequence<'t> {
    arena: &'t Arena,
    items: &'t [NodeId],
    pos: Pos,
}

impl<'t> Sequence<'t> {
    pub fn iter(&self) -> impl Iterator<Item = Node<'t>> + use<'t> {
        let arena = self.arena;
        self.items.iter().map(move |&item| arena.node(item))
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub fn pos(&self) -> Pos {
        self.pos
    }
}

/// Indexes into the arena's vectors are `u32`, which halves the tree's size. A policy is at
/// most 32 MiB and every node takes at least a character of it, and the scalars' text at most
/// one and a half times the input (`\L` becomes three bytes), so none can overflow.
fn to_u32(index: usize) -> u32 {
    u32::try_from(index).unwrap_or(u32::MAX)
}

/// A 1-based line and column, as marked-yaml counted them.
#[derive(Clone, Copy)]
struct Mark {
    line: u32,
    column: u32,
}

impl Mark {
    fn pos(self) -> Pos {
        Pos {
            line: self.line as usize,
            column: self.column as usize,
        }
    }
}

impl From<Marker> for Mark {
    fn from(marker: Marker) -> Self {
        Mark {
            line: to_u32(marker.line()),
            column: to_u32(marker.col() + 1),
        }
    }
}

#[derive(Clone, Copy)]
enum NodeId {
    Scalar(u32),
    Mapping(u32),
    Sequence(u32),
}

struct ScalarData {
    /// The byte range of its text in `Arena::text`.
    start: u32,
    end: u32,
    mark: Mark,
    plain: bool,
}

/// A mapping or a sequence: its children are `len` consecutive entries or items.
struct ContainerData {
    first: u32,
    len: u32,
    mark: Mark,
}

impl ContainerData {
    fn children(&self) -> std::ops::Range<usize> {
        self.first as usize..self.first as usize + self.len as usize
    }
}

#[derive(Clone, Copy)]
struct Entry {
    /// A scalar: keys are never anything else.
    key: u32,
    value: NodeId,
}

/// A batch of streamed items is handed over once it holds this many scalars (some 600
/// edges): enough that handing over costs little, few enough that a batch stays in the cache.
const BATCH_SCALARS: usize = 8192;

/// Up to this many keys, a new key is compared with the earlier ones; a longer mapping (only
/// a malformed policy has one) indexes them, so that loading stays linear in the input.
const LINEAR_KEYS: usize = 16;

/// A mapping or sequence whose end has not been seen yet.
struct Open {
    mark: Mark,
    /// Where its finished children start in `Builder::entries` or `Builder::items`.
    first: usize,
    kind: OpenKind,
}

enum OpenKind {
    Mapping {
        /// The key read, while its value is still being read.
        key: Option<u32>,
        /// Each key's first scalar, once the mapping has more than `LINEAR_KEYS` keys.
        index: Option<HashMap<String, u32>>,
    },
    Sequence {
        /// The streamed list, whose items are built in an arena of their own and handed over.
        streamed: bool,
    },
}

/// Builds a [`Tree`] from the parser's events with an explicit stack, so nesting costs no
/// recursion here.
struct Builder<'s, F> {
    arena: Arena,
    open: Vec<Open>,
    /// The finished entries of the open mappings, innermost last.
    entries: Vec<Entry>,
    /// The finished items of the open sequences, innermost last.
    items: Vec<NodeId>,
    /// The top-level mapping once it is complete, with the character index where it ends.
    root: Option<(u32, usize)>,
    /// The first problem; every later event is ignored, as marked-yaml did.
    error: Option<LoadError>,
    streamed: &'s str,
    /// The streamed items built so far in `arena`, which is then theirs alone.
    batch: Vec<NodeId>,
    /// The tree's own arena, set aside while the streamed list is being read.
    rest: Option<Arena>,
    on_items: F,
}

impl<F: FnMut(Items)> MarkedEventReceiver for Builder<'_, F> {
    fn on_event(&mut self, event: Event, marker: Marker) {
        if self.error.is_none()
            && let Err(error) = self.event(event, marker)
        {
            self.error = Some(error);
        }
    }
}

impl<F: FnMut(Items)> Builder<'_, F> {
    fn event(&mut self, event: Event, marker: Marker) -> Result<(), LoadError> {
        let mark = Mark::from(marker);
        // Tags and anchors are checked in marked-yaml's order, which decides the message when
        // a node has both.
        match event {
            Event::MappingStart(anchor, tag) => {
                refuse_tag(tag.as_ref(), mark)?;
                refuse_anchor(anchor, mark)?;
                self.start(mark, true)
            }
            Event::SequenceStart(anchor, tag) => {
                refuse_tag(tag.as_ref(), mark)?;
                refuse_anchor(anchor, mark)?;
                self.start(mark, false)
            }
            Event::Scalar(value, style, anchor, tag) => {
                refuse_anchor(anchor, mark)?;
                refuse_tag(tag.as_ref(), mark)?;
                self.scalar(&value, style, mark)
            }
            Event::MappingEnd | Event::SequenceEnd => self.end(marker),
            // An alias needs an anchor, which is refused where it is defined.
            Event::Alias(_) => Err(LoadError::UnexpectedAnchor(mark.pos())),
            Event::StreamEnd if self.root.is_none() && self.open.is_empty() => {
                // No document at all: an empty mapping, there.
                let empty = self.arena.container(mark, 0, 0);
                self.root = Some((empty, marker.index()));
                Ok(())
            }
            Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd
            | Event::Nothing => Ok(()),
        }
    }

    fn start(&mut self, mark: Mark, is_mapping: bool) -> Result<(), LoadError> {
        let kind = match self.open.as_slice() {
            [] if !is_mapping => return Err(LoadError::TopLevelMustBeMapping(mark.pos())),
            [
                ..,
                Open {
                    kind: OpenKind::Mapping { key: None, .. },
                    ..
                },
            ] => return Err(LoadError::MappingKeyMustBeScalar(mark.pos())),
            _ if is_mapping => OpenKind::Mapping {
                key: None,
                index: None,
            },
            [
                Open {
                    kind: OpenKind::Mapping { key: Some(key), .. },
                    ..
                },
            ] if self.arena.key_text(*key) == self.streamed => {
                self.rest = Some(std::mem::take(&mut self.arena));
                OpenKind::Sequence { streamed: true }
            }
            _ => OpenKind::Sequence { streamed: false },
        };
        let first = match kind {
            OpenKind::Mapping { .. } => self.entries.len(),
            OpenKind::Sequence { .. } => self.items.len(),
        };
        self.open.push(Open { mark, first, kind });
        Ok(())
    }

    fn scalar(&mut self, value: &str, style: TScalarStyle, mark: Mark) -> Result<(), LoadError> {
        let start = to_u32(self.arena.text.len());
        self.arena.text.push_str(value);
        self.arena.scalars.push(ScalarData {
            start,
            end: to_u32(self.arena.text.len()),
            mark,
            plain: matches!(style, TScalarStyle::Plain),
        });
        let scalar = to_u32(self.arena.scalars.len() - 1);
        match self.open.last_mut() {
            None => Err(LoadError::TopLevelMustBeMapping(mark.pos())),
            Some(Open {
                kind: OpenKind::Mapping {
                    key: key @ None, ..
                },
                ..
            }) => {
                *key = Some(scalar);
                Ok(())
            }
            Some(_) => self.finished(NodeId::Scalar(scalar), 0),
        }
    }

    fn end(&mut self, marker: Marker) -> Result<(), LoadError> {
        let Some(open) = self.open.pop() else {
            return Ok(());
        };
        let arena = &mut self.arena;
        let node = match open.kind {
            OpenKind::Mapping { .. } => {
                let first = arena.entries.len();
                arena.entries.extend(self.entries.drain(open.first..));
                NodeId::Mapping(arena.container(open.mark, first, arena.entries.len() - first))
            }
            OpenKind::Sequence { streamed: true } => {
                self.hand_over();
                if let Some(rest) = self.rest.take() {
                    self.arena = rest;
                }
                NodeId::Sequence(self.arena.container(open.mark, 0, 0))
            }
            OpenKind::Sequence { streamed: false } => {
                let first = arena.items.len();
                arena.items.extend(self.items.drain(open.first..));
                NodeId::Sequence(arena.container(open.mark, first, arena.items.len() - first))
            }
        };
        self.finished(node, marker.index())
    }

    /// Adds a finished `node` to the mapping or sequence it is in; the root ends at `end`.
    fn finished(&mut self, node: NodeId, end: usize) -> Result<(), LoadError> {
        let Some(open) = self.open.last_mut() else {
            if let NodeId::Mapping(root) = node {
                self.root = Some((root, end));
            }
            return Ok(());
        };
        match &mut open.kind {
            OpenKind::Sequence { streamed: true } => {
                self.batch.push(node);
                if self.arena.scalars.len() >= BATCH_SCALARS {
                    self.hand_over();
                }
            }
            OpenKind::Sequence { streamed: false } => self.items.push(node),
            OpenKind::Mapping { key, index } => {
                // A key is always waiting: a scalar where one is due becomes the key, and a
                // mapping or sequence there is refused in `start`.
                let Some(key) = key.take() else {
                    return Ok(());
                };
                let earlier = &self.entries[open.first..];
                let text = self.arena.key_text(key);
                let first = match index {
                    Some(index) => index.get(text).copied(),
                    None => earlier
                        .iter()
                        .map(|entry| entry.key)
                        .find(|&earlier| self.arena.key_text(earlier) == text),
                };
                if let Some(first) = first {
                    return Err(LoadError::DuplicateKey {
                        key: text.to_owned(),
                        pos: self.arena.scalars[key as usize].mark.pos(),
                        first_line: self.arena.scalars[first as usize].mark.pos().line,
                    });
                }
                match index {
                    Some(index) => {
                        index.insert(text.to_owned(), key);
                    }
                    None if earlier.len() + 1 > LINEAR_KEYS => {
                        let keys = earlier.iter().map(|entry| entry.key).chain([key]);
                        *index = Some(
                            keys.map(|key| (self.arena.key_text(key).to_owned(), key))
                                .collect(),
                        );
                    }
                    None => {}
                }
                self.entries.push(Entry { key, value: node });
            }
        }
        Ok(())
    }

    /// Hands the streamed items built so far over, with their arena.
    fn hand_over(&mut self) {
        if !self.batch.is_empty() {
            // The next batch will be about as large: sized up front, it grows no more.
            let next = self.arena.with_same_capacity();
            (self.on_items)(Items {
                arena: std::mem::replace(&mut self.arena, next),
                items: std::mem::take(&mut self.batch),
            });
        }
    }

    fn finish(self) -> Result<Tree, LoadError> {
        if let Some(error) = self.error {
            return Err(error);
        }
        let mut arena = self.arena;
        // The parser reports success only after a whole document or an empty stream, both
        // of which set the root; an empty mapping stands in for it regardless.
        let (root, end) = self.root.unwrap_or_else(|| {
            let empty = arena.container(Mark { line: 1, column: 1 }, 0, 0);
            (empty, 0)
        });
        Ok(Tree { arena, root, end })
    }
}

fn refuse_tag(tag: Option<&Tag>, mark: Mark) -> Result<(), LoadError> {
    match tag {
        Some(_) => Err(LoadError::UnexpectedTag(mark.pos())),
        None => Ok(()),
    }
}

fn refuse_anchor(anchor: usize, mark: Mark) -> Result<(), LoadError> {
    match anchor {
        0 => Ok(()),
        _ => Err(LoadError::UnexpectedAnchor(mark.pos())),
    }
}
