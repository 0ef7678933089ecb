//! Where things are in the config text.
//!
//! The typed [`Config`](super::Config) keeps spans for only a few fields, so
//! errors are located through a second, span-preserving parse of the same
//! text ([`toml::de::DeTable`]): a validator names a field by its path of
//! keys and indices, and this module turns the path into `line:column` and a
//! readable context such as `scalers[1] "web".behavior.scale_up`. The other
//! way round, a serde error's byte span is turned into the path it falls in.

use std::cell::OnceCell;
use std::fmt;
use std::ops::Range;
use std::path::Path;

use toml::Spanned;
use toml::de::{DeTable, DeValue};

use super::{Origin, Problem};

/// One step of a path into the document: a table key or an array index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Seg {
    /// A key of a table.
    Key(String),
    /// An element of an array.
    Index(usize),
}

impl From<&str> for Seg {
    fn from(key: &str) -> Self {
        Seg::Key(key.to_owned())
    }
}

impl From<&String> for Seg {
    fn from(key: &String) -> Self {
        Seg::Key(key.clone())
    }
}

impl From<usize> for Seg {
    fn from(index: usize) -> Self {
        Seg::Index(index)
    }
}

/// Builds a path from keys and indices: `keys!["scalers", 1, "min"]`.
macro_rules! keys {
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::location::Seg::from($seg)),*]
    };
}
pub(super) use keys;

/// What a byte span of a serde error falls on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hit {
    /// A key (e.g. an unknown field).
    Key,
    /// A table's header or inline braces (e.g. a missing field).
    Table,
    /// Any other value.
    Value,
}

/// The config text, parsed once more with every key and value's span.
///
/// Built before every check but parsed only when a problem must be located:
/// a valid config (the usual case, and every reload of a module that fits)
/// never pays for it. For the fleet benchmark's 10,000 scalers that parse
/// held ~140 MiB at its peak, and a start validated the text three times.
pub(super) struct Document<'t> {
    file: &'t Path,
    text: Text<'t>,
    parsed: OnceCell<Parsed<'t>>,
}

/// Where a document's text comes from.
enum Text<'t> {
    /// Already in memory.
    Ready(&'t str),
    /// Decompressed from the config's origin on first use, into the
    /// caller's cell (which outlives the document).
    Stored(&'t Origin, &'t OnceCell<String>),
}

struct Parsed<'t> {
    text: &'t str,
    /// `None` when the text is not valid TOML (then only syntax errors are reported).
    root: Option<DeTable<'t>>,
    /// Byte offset of the start of each line.
    line_starts: Vec<usize>,
}

impl fmt::Debug for Document<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Document")
            .field("file", &self.file)
            .finish_non_exhaustive()
    }
}

impl<'t> Document<'t> {
    /// The document of `text`, read from `file`.
    pub(super) fn new(file: &'t Path, text: &'t str) -> Self {
        Document {
            file,
            text: Text::Ready(text),
            parsed: OnceCell::new(),
        }
    }

    /// The document of the config text `origin` keeps, decompressed into
    /// `cell` only if a problem must be located.
    pub(super) fn of(origin: &'t Origin, cell: &'t OnceCell<String>) -> Self {
        Document {
            file: origin.path(),
            text: Text::Stored(origin, cell),
            parsed: OnceCell::new(),
        }
    }

    fn parsed(&self) -> &Parsed<'t> {
        self.parsed.get_or_init(|| {
            let text: &'t str = match self.text {
                Text::Ready(text) => text,
                Text::Stored(origin, cell) => cell.get_or_init(|| origin.text()),
            };
            Parsed {
                text,
                root: DeTable::parse(text).ok().map(Spanned::into_inner),
                line_starts: std::iter::once(0)
                    .chain(text.match_indices('\n').map(|(i, _)| i + 1))
                    .collect(),
            }
        })
    }

    /// Whether the text has been parsed (a test's window on the laziness).
    #[cfg(test)]
    pub(super) fn is_parsed(&self) -> bool {
        self.parsed.get().is_some()
    }

    /// 1-based line and column (in characters) of a byte offset.
    pub(super) fn line_col(&self, offset: usize) -> (usize, usize) {
        let parsed = self.parsed();
        let offset = offset.min(parsed.text.len());
        let line = parsed.line_starts.partition_point(|&start| start <= offset);
        let start = parsed.line_starts[line - 1];
        let column = parsed
            .text
            .get(start..offset)
            .map_or(offset - start, |s| s.chars().count());
        (line, column + 1)
    }

    /// A problem at byte `offset`, in the context `context`.
    pub(super) fn problem_at(
        &self,
        offset: Option<usize>,
        context: &[Seg],
        message: impl Into<String>,
    ) -> Problem {
        let (line, column) = offset.map_or((0, 0), |o| self.line_col(o));
        Problem {
            file: self.file.to_path_buf(),
            line,
            column,
            path: self.render(context),
            message: message.into(),
        }
    }

    /// A problem with the value at `path`: located at the value (or, when
    /// it was not written, at the nearest enclosing thing that was) and
    /// described in the context of the table that holds it.
    pub(super) fn value_problem(&self, path: &[Seg], message: impl Into<String>) -> Problem {
        let offset = self.locate(path, false);
        self.problem_at(offset, context_of(path), message)
    }

    /// Like [`Self::value_problem`] but located at the key itself (an
    /// unknown or misnamed key).
    pub(super) fn key_problem(&self, path: &[Seg], message: impl Into<String>) -> Problem {
        let offset = self.locate(path, true);
        self.problem_at(offset, context_of(path), message)
    }

    /// The node at `path`, if it was written.
    pub(super) fn get(&self, path: &[Seg]) -> Option<&Spanned<DeValue<'t>>> {
        let (first, rest) = path.split_first()?;
        let Seg::Key(key) = first else { return None };
        let mut node = self.parsed().root.as_ref()?.get(key.as_str())?;
        for seg in rest {
            node = child(node.get_ref(), seg)?.1;
        }
        Some(node)
    }

    /// Inside the table at `path`, the first key named `name` or string
    /// value equal to it: its path, what it is, and its byte offset.
    pub(super) fn find_in(&self, path: &[Seg], name: &str) -> Option<(Vec<Seg>, Hit, usize)> {
        /// A string, number or boolean as serde's errors quote it.
        fn scalar_text<'v>(value: &'v DeValue<'_>) -> Option<std::borrow::Cow<'v, str>> {
            match value {
                DeValue::String(s) => Some(std::borrow::Cow::Borrowed(&**s)),
                DeValue::Integer(i) => Some(i.as_str().replace('_', "").into()),
                DeValue::Float(f) => Some(f.as_str().replace('_', "").into()),
                DeValue::Boolean(b) => Some(b.to_string().into()),
                _ => None,
            }
        }
        /// Every key named `name` and every value written as `name`, in
        /// file order.
        fn walk(
            value: &DeValue<'_>,
            name: &str,
            path: &mut Vec<Seg>,
            hits: &mut Vec<(Vec<Seg>, Hit, usize)>,
        ) {
            match value {
                DeValue::Table(table) => {
                    for (key, child) in table.iter() {
                        path.push(Seg::Key(key.get_ref().to_string()));
                        if key.get_ref() == name {
                            hits.push((path.clone(), Hit::Key, key.span().start));
                        } else if scalar_text(child.get_ref()).as_deref() == Some(name) {
                            hits.push((path.clone(), Hit::Value, child.span().start));
                        } else {
                            walk(child.get_ref(), name, path, hits);
                        }
                        path.pop();
                    }
                }
                DeValue::Array(array) => {
                    for (index, child) in array.iter().enumerate() {
                        path.push(Seg::Index(index));
                        walk(child.get_ref(), name, path, hits);
                        path.pop();
                    }
                }
                _ => {}
            }
        }
        let start = self.get(path)?;
        let mut hits = Vec::new();
        walk(start.get_ref(), name, &mut path.to_vec(), &mut hits);
        // A key is what the error names; a value only when no other value
        // is written the same (`true` twice: which one is wrong is not
        // known, and the table is named instead).
        if let Some(key) = hits.iter().position(|(_, hit, _)| *hit == Hit::Key) {
            return Some(hits.swap_remove(key));
        }
        match hits.len() {
            1 => hits.pop(),
            _ => None,
        }
    }

    /// Byte offset of the value (or key) at `path`, or of the deepest part
    /// of it that was written.
    fn locate(&self, path: &[Seg], at_key: bool) -> Option<usize> {
        let root = self.parsed().root.as_ref()?;
        let mut best = None;
        let mut table: Option<&DeValue<'t>> = None;
        for (depth, seg) in path.iter().enumerate() {
            let found = match (table, seg) {
                (None, Seg::Key(key)) if depth == 0 => root
                    .get_key_value(key.as_str())
                    .map(|(k, v)| (Some(k.span()), v)),
                (Some(parent), seg) => child(parent, seg),
                _ => None,
            };
            let Some((key_span, value)) = found else {
                break;
            };
            let last = depth + 1 == path.len();
            best = Some(pick_span(key_span, value.span(), last && at_key));
            table = Some(value.get_ref());
        }
        best.map(|span| span.start)
    }

    /// The path and the kind of node the byte span `span` falls on: the
    /// deepest key or value whose span holds it.
    pub(super) fn path_at(&self, span: &Range<usize>) -> (Vec<Seg>, Hit) {
        let mut best = (Vec::new(), Hit::Table, 0);
        if let Some(root) = &self.parsed().root {
            let mut path = Vec::new();
            for (key, value) in root.iter() {
                path.push(Seg::Key(key.get_ref().to_string()));
                search(key.span(), value, span, &mut path, &mut best);
                path.pop();
            }
        }
        (best.0, best.1)
    }

    /// Renders a path for a reader: array elements that have a `name` or
    /// `module` are labelled with it (`scalers[1] "web"`).
    pub(super) fn render(&self, path: &[Seg]) -> String {
        let mut out = String::new();
        for (i, seg) in path.iter().enumerate() {
            match seg {
                Seg::Key(key) => {
                    if !out.is_empty() {
                        out.push('.');
                    }
                    out.push_str(&key_segment(key));
                }
                Seg::Index(index) => {
                    out.push_str(&format!("[{index}]"));
                    let label = self.get(&path[..=i]).and_then(|v| {
                        let table = v.get_ref().as_table()?;
                        table
                            .get("name")
                            .or_else(|| table.get("module"))
                            .and_then(|v| v.get_ref().as_str())
                    });
                    if let Some(label) = label {
                        out.push_str(&format!(" {label:?}"));
                    }
                }
            }
        }
        out
    }
}

/// The context a field's problem is described in: the table holding the
/// field (an array element keeps its index, so `limits[1]` stays itself).
pub(super) fn context_of(path: &[Seg]) -> &[Seg] {
    match path.split_last() {
        Some((Seg::Key(_), parent)) => parent,
        _ => path,
    }
}

/// The child of a table or array, with the key's span for table entries.
fn child<'a, 't>(
    parent: &'a DeValue<'t>,
    seg: &Seg,
) -> Option<(Option<Range<usize>>, &'a Spanned<DeValue<'t>>)> {
    match (parent, seg) {
        (DeValue::Table(table), Seg::Key(key)) => table
            .get_key_value(key.as_str())
            .map(|(k, v)| (Some(k.span()), v)),
        (DeValue::Array(array), Seg::Index(index)) => array.get(*index).map(|v| (None, v)),
        _ => None,
    }
}

/// Where to point for a node: the key when asked, or when the value's span
/// is empty (tables that exist only through dotted keys have no text).
fn pick_span(key: Option<Range<usize>>, value: Range<usize>, at_key: bool) -> Range<usize> {
    match key {
        Some(key) if at_key || value.is_empty() => key,
        _ => value,
    }
}

fn search<'t>(
    key_span: Range<usize>,
    value: &Spanned<DeValue<'t>>,
    target: &Range<usize>,
    path: &mut Vec<Seg>,
    best: &mut (Vec<Seg>, Hit, usize),
) {
    let depth = path.len();
    let holds = |span: &Range<usize>| span.start <= target.start && target.end <= span.end;
    if holds(&key_span) && !key_span.is_empty() && depth >= best.2 {
        *best = (path.clone(), Hit::Key, depth);
    }
    let value_span = value.span();
    if holds(&value_span) && !value_span.is_empty() && depth >= best.2 {
        let hit = if value.get_ref().is_table() {
            Hit::Table
        } else {
            Hit::Value
        };
        *best = (path.clone(), hit, depth);
    }
    match value.get_ref() {
        DeValue::Table(table) => {
            for (key, child) in table.iter() {
                path.push(Seg::Key(key.get_ref().to_string()));
                search(key.span(), child, target, path, best);
                path.pop();
            }
        }
        DeValue::Array(array) => {
            for (index, child) in array.iter().enumerate() {
                path.push(Seg::Index(index));
                // Array elements have no key; an empty span never matches.
                search(0..0, child, target, path, best);
                path.pop();
            }
        }
        _ => {}
    }
}

/// `key` as a path shows it: as it is when bare, quoted otherwise.
pub(super) fn key_segment(key: &str) -> String {
    if is_bare_key(key) {
        key.to_owned()
    } else {
        format!("{key:?}")
    }
}

fn is_bare_key(key: &str) -> bool {
    !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = "\
policy_dir = \"p\"

[[scalers]]
name = \"web\"
min = 5
target = { kind = \"simulator\", service = \"web\" }
[scalers.behavior.scale_up]
limits = [{ pods = 1, period = \"1m\" }, { percent = 2 }]

[[scalers]]
name = \"worker\"
[sources.\"a b\"]
url = \"é\"
";

    fn doc() -> Document<'static> {
        Document::new(Path::new("t.toml"), TEXT)
    }

    #[test]
    fn offsets_become_lines_and_columns() {
        let d = doc();
        let cases = [
            (0, (1, 1)),
            (13, (1, 14)),
            (17, (2, 1)),
            (18, (3, 1)),
            (TEXT.len(), (14, 1)),
        ];
        for (offset, expected) in cases {
            assert_eq!(d.line_col(offset), expected, "offset {offset}");
        }
        // Columns count characters, not bytes.
        let after_e = TEXT.find('é').unwrap() + 'é'.len_utf8();
        assert_eq!(d.line_col(after_e), (13, 9));
    }

    #[test]
    fn paths_locate_values_keys_and_nearest_parents() {
        let d = doc();
        // (path, point at the key?, expected line:column, expected context)
        type Case = (Vec<Seg>, bool, (usize, usize), &'static str);
        let cases: Vec<Case> = vec![
            (
                keys!["scalers", 0, "min"].to_vec(),
                false,
                (5, 7),
                "scalers[0] \"web\"",
            ),
            (
                keys!["scalers", 0, "min"].to_vec(),
                true,
                (5, 1),
                "scalers[0] \"web\"",
            ),
            (
                keys!["scalers", 1, "min"].to_vec(),
                false,
                (10, 1),
                "scalers[1] \"worker\"",
            ),
            (
                keys!["scalers", 0, "behavior", "scale_up", "limits", 1, "period"].to_vec(),
                false,
                (8, 40),
                "scalers[0] \"web\".behavior.scale_up.limits[1]",
            ),
            (
                keys!["scalers", 0, "target", "service"].to_vec(),
                false,
                (6, 42),
                "scalers[0] \"web\".target",
            ),
            (
                keys!["sources", "a b", "url"].to_vec(),
                false,
                (13, 7),
                "sources.\"a b\"",
            ),
        ];
        for (path, at_key, (line, column), context) in cases {
            let p = if at_key {
                d.key_problem(&path, "m")
            } else {
                d.value_problem(&path, "m")
            };
            assert_eq!((p.line, p.column), (line, column), "{path:?}");
            assert_eq!(p.path, context, "{path:?}");
        }
    }

    #[test]
    fn spans_map_back_to_paths() {
        let d = doc();
        let at = |needle: &str| {
            let start = TEXT.find(needle).unwrap();
            d.path_at(&(start..start + needle.len()))
        };
        assert_eq!(at("min"), (keys!["scalers", 0, "min"].to_vec(), Hit::Key));
        assert_eq!(at("5"), (keys!["scalers", 0, "min"].to_vec(), Hit::Value));
        assert_eq!(
            at("{ percent = 2 }"),
            (
                keys!["scalers", 0, "behavior", "scale_up", "limits", 1].to_vec(),
                Hit::Table
            )
        );
        assert_eq!(
            at("\"worker\""),
            (keys!["scalers", 1, "name"].to_vec(), Hit::Value)
        );
    }

    #[test]
    fn invalid_toml_has_no_paths_but_still_has_lines() {
        let d = Document::new(Path::new("t.toml"), "a = [\nb");
        assert_eq!(d.line_col(6), (2, 1));
        assert_eq!(d.value_problem(&keys!["a"], "m").line, 0);
    }
}
