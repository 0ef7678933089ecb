//! Parsing a config one `[[scalers]]` element and one `[simulations.<name>]`
//! table at a time.
//!
//! The toml crate parses a whole document into a tree before deserialising
//! it, with a token and an event per token alongside: about 35 bytes of heap
//! for every byte of text. For a fleet's config (10,000 scalers, 4.9 MB)
//! that was a 170 MB peak at start and at every reload, three times what
//! the running daemon holds. Here the file's top-level headers are found
//! with toml's own lexer (streaming, nothing kept), each scaler and each
//! simulation is parsed on its own from its slice of the text, and the
//! rest (the settings) from a copy of the text with those slices blanked
//! out, so every span keeps its place in the file.
//!
//! Only plain layouts are parsed this way: any header this does not
//! understand, a scaler's sub-table away from its `[[scalers]]`, a
//! simulation defined in two places, a parse error anywhere: the caller
//! parses the whole text as before, which also gives the error its usual
//! words and location. A successful parse here gives what the whole-text
//! parse gives (debug builds check that on every config they load).

use std::collections::{BTreeMap, HashSet};
use std::ops::Range;

use serde::Deserialize;
use toml::Spanned;
use toml::de::{DeTable, DeValue, Deserializer};
use toml_parser::Source;
use toml_parser::lexer::{Lexer, TokenKind};

use super::{Config, ScalerConfig, SimulationConfig};

/// A top-level table header: where it starts and its key path.
#[derive(Debug, PartialEq)]
struct Header {
    start: usize,
    array: bool,
    keys: Vec<String>,
}

/// What an element's slice of the text holds.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Scaler,
    Simulation,
}

/// A scaler or a simulation: its slice of the text.
#[derive(Debug, PartialEq)]
struct Element {
    range: Range<usize>,
    kind: Kind,
}

/// `[[scalers]]` alone, as a document of one element is read.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Scalers {
    scalers: Vec<Spanned<ScalerConfig>>,
}

/// `[simulations.<name>]` alone.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Simulations {
    simulations: BTreeMap<String, Spanned<SimulationConfig>>,
}

/// Parses `text` a section at a time; `None` when the text has no scalers
/// or simulations to parse apart, or anything is not as plain as this
/// needs (see the module's docs): the caller then parses it whole.
pub(super) fn parse(text: &str) -> Option<Config> {
    let elements = elements(text, &headers(text)?)?;
    if elements.is_empty() {
        return None;
    }
    let mut settings = text.as_bytes().to_vec();
    for element in &elements {
        settings[element.range.clone()].fill(b' ');
    }
    // Whole UTF-8 characters were replaced: each slice starts at a `[`
    // and ends before one or at the end.
    let settings = String::from_utf8(settings).ok()?;
    let table = DeTable::parse(&settings).ok()?;
    if ["scalers", "simulations"]
        .iter()
        .any(|key| table.get_ref().contains_key(*key))
    {
        // Also written outside headers (inline or dotted keys, even empty:
        // `scalers = []` and a `[[scalers]]` is a TOML error as a whole).
        return None;
    }
    let mut config = Config::deserialize(Deserializer::from(table)).ok()?;
    drop(settings);
    let scalers = elements.iter().filter(|e| e.kind == Kind::Scaler).count();
    config.scalers.reserve_exact(scalers);
    for element in elements {
        let table = element_table(text, element.range)?;
        match element.kind {
            Kind::Scaler => {
                let Scalers { scalers } = Scalers::deserialize(Deserializer::from(table)).ok()?;
                let [scaler] = <[_; 1]>::try_from(scalers).ok()?;
                config.scalers.push(scaler);
            }
            Kind::Simulation => {
                let Simulations { simulations } =
                    Simulations::deserialize(Deserializer::from(table)).ok()?;
                for (name, simulation) in simulations {
                    if config.simulations.insert(name, simulation).is_some() {
                        return None;
                    }
                }
            }
        }
    }
    Some(config)
}

/// Debug builds: panics unless `config`, parsed a section at a time, is
/// what parsing the whole `text` gives, spans included (`Spanned`'s
/// `Debug` shows them). Every config the test suite loads goes through it.
#[cfg(debug_assertions)]
pub(super) fn check_against_whole(config: &Config, text: &str) {
    let whole: Config = toml::from_str(text).expect("the whole text parses when its sections do");
    assert_eq!(
        format!("{config:?}"),
        format!("{whole:?}"),
        "a config parsed by sections differs from the whole text's parse"
    );
}

/// The slice `range` of `text` parsed, its spans moved to their places in
/// `text`.
fn element_table(text: &str, range: Range<usize>) -> Option<Spanned<DeTable<'_>>> {
    let offset = range.start;
    let table = DeTable::parse(&text[range]).ok()?;
    let span = table.span();
    let mut table = table.into_inner();
    for (_, value) in table.iter_mut() {
        shift(value, offset);
    }
    Some(Spanned::new(span.start + offset..span.end + offset, table))
}

/// Moves the spans of `value` and of everything in it by `offset`. Keys'
/// spans stay: no config type reads a key's span.
fn shift(value: &mut Spanned<DeValue<'_>>, offset: usize) {
    let span = value.span();
    let inner = std::mem::replace(value.get_mut(), DeValue::Boolean(false));
    *value = Spanned::new(span.start + offset..span.end + offset, inner);
    match value.get_mut() {
        DeValue::Array(items) => items.iter_mut().for_each(|item| shift(item, offset)),
        DeValue::Table(table) => table.iter_mut().for_each(|(_, v)| shift(v, offset)),
        _ => {}
    }
}

/// The scalers and simulations of the text, in file order, from its
/// top-level `headers`; `None` for a layout to parse whole.
fn elements(text: &str, headers: &[Header]) -> Option<Vec<Element>> {
    let mut elements: Vec<Element> = Vec::new();
    let mut simulations = HashSet::new();
    // What the previous section belongs to, and its simulation's name.
    // (`None`: the settings.)
    let mut previous: Option<(Kind, &str)> = None;
    for (i, header) in headers.iter().enumerate() {
        let end = headers.get(i + 1).map_or(text.len(), |next| next.start);
        let range = header.start..end;
        previous = match header.keys.first().map(String::as_str) {
            Some("scalers") if header.array && header.keys.len() == 1 => {
                elements.push(Element {
                    range,
                    kind: Kind::Scaler,
                });
                Some((Kind::Scaler, ""))
            }
            // A scaler's sub-table, right after the rest of its scaler.
            Some("scalers") if matches!(previous, Some((Kind::Scaler, _))) => {
                elements.last_mut()?.range.end = end;
                previous
            }
            Some("scalers") => return None,
            Some("simulations") if !header.array && header.keys.len() >= 2 => {
                let name = header.keys[1].as_str();
                if previous == Some((Kind::Simulation, name)) {
                    elements.last_mut()?.range.end = end;
                } else {
                    if !simulations.insert(name) {
                        return None;
                    }
                    elements.push(Element {
                        range,
                        kind: Kind::Simulation,
                    });
                }
                Some((Kind::Simulation, name))
            }
            Some("simulations") => return None,
            _ => None,
        };
    }
    Some(elements)
}

/// The text's top-level table headers, found with toml's lexer: a `[` that
/// starts a line outside any value. `None` for a header this does not read
/// (escapes in a quoted key, anything unexpected).
fn headers(text: &str) -> Option<Vec<Header>> {
    let mut lexer = Source::new(text).lex();
    let mut headers = Vec::new();
    // At the start of a line and outside any value.
    let mut line_start = true;
    // Brackets and braces open in a value.
    let mut depth = 0usize;
    while let Some(token) = lexer.next() {
        match token.kind() {
            TokenKind::Eof => break,
            TokenKind::Whitespace | TokenKind::Comment => {}
            TokenKind::Newline => line_start = depth == 0,
            TokenKind::LeftSquareBracket if line_start => {
                let (array, keys) = header_keys(&mut lexer, text)?;
                headers.push(Header {
                    start: token.span().start(),
                    array,
                    keys,
                });
                line_start = false;
            }
            TokenKind::LeftSquareBracket | TokenKind::LeftCurlyBracket => {
                depth += 1;
                line_start = false;
            }
            TokenKind::RightSquareBracket | TokenKind::RightCurlyBracket => {
                depth = depth.checked_sub(1)?;
                line_start = false;
            }
            _ => line_start = false,
        }
    }
    Some(headers)
}

/// The rest of a header after its first `[`: whether it is an array of
/// tables (`[[`), and its keys.
fn header_keys(lexer: &mut Lexer<'_>, text: &str) -> Option<(bool, Vec<String>)> {
    let mut token = lexer.next()?;
    let array = token.kind() == TokenKind::LeftSquareBracket;
    if array {
        token = lexer.next()?;
    }
    let mut keys = Vec::new();
    loop {
        let raw = &text[token.span().start()..token.span().end()];
        match token.kind() {
            TokenKind::Whitespace | TokenKind::Dot => {}
            TokenKind::Atom => keys.push(raw.to_owned()),
            TokenKind::LiteralString => {
                keys.push(raw.strip_prefix('\'')?.strip_suffix('\'')?.to_owned())
            }
            TokenKind::BasicString if !raw.contains('\\') => {
                keys.push(raw.strip_prefix('"')?.strip_suffix('"')?.to_owned())
            }
            TokenKind::RightSquareBracket => break,
            _ => return None,
        }
        token = lexer.next()?;
    }
    if array && lexer.next()?.kind() != TokenKind::RightSquareBracket {
        return None;
    }
    if keys.is_empty() {
        None
    } else {
        Some((array, keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(text: &str) -> Vec<(bool, Vec<String>)> {
        headers(text)
            .expect("headers")
            .into_iter()
            .map(|h| (h.array, h.keys))
            .collect()
    }

    fn k(array: bool, keys: &[&str]) -> (bool, Vec<String>) {
        (array, keys.iter().map(|k| k.to_string()).collect())
    }

    #[test]
    fn headers_are_found_only_at_the_top_level() {
        let text = r#"
policy_dir = "p"
x = [
  [1, 2],
  [3],
]
s = """
[[scalers]]
"""
  [api] # indented, with a comment
[[scalers]]
name = { a = [
[4] ] }
[scalers . "target"]
['scalers'.policies.x]
"#;
        assert_eq!(
            keys(text),
            vec![
                k(false, &["api"]),
                k(true, &["scalers"]),
                k(false, &["scalers", "target"]),
                k(false, &["scalers", "policies", "x"]),
            ]
        );
        assert_eq!(
            headers("[\"a\\u0041\"]\n"),
            None,
            "escapes are left to toml"
        );
    }

    /// The bundled configs are split, and their parse is the whole text's.
    #[test]
    fn the_bundled_configs_parse_by_sections_as_whole() {
        for text in [
            crate::config::DEMO_CONFIG,
            include_str!("../../../docs/config.example.toml"),
        ] {
            let config = parse(text).expect("parsed by sections");
            assert!(!config.scalers.is_empty());
            check_against_whole(&config, text);
        }
    }

    /// `scalers = []` beside `[[scalers]]` is a TOML error as a whole text:
    /// not split (which read it as one scaler, and a debug build panicked
    /// comparing), so the whole-text parse says what is wrong.
    #[test]
    fn a_scalers_or_simulations_key_among_the_settings_is_not_split() {
        let demo = crate::config::DEMO_CONFIG;
        for key in ["scalers = []", "simulations = {}"] {
            let text = format!("{key}\n{demo}");
            assert!(parse(&text).is_none(), "{key}");
            assert!(toml::from_str::<Config>(&text).is_err(), "{key}");
        }
    }

    /// Spans point into the whole text, so problems are located as before.
    #[test]
    fn spans_keep_their_place_in_the_file() {
        let text = crate::config::DEMO_CONFIG;
        let config = parse(text).expect("parsed by sections");
        let names: Vec<&str> = config
            .scalers
            .iter()
            .map(|s| &text[s.get_ref().name.span()])
            .collect();
        assert_eq!(names, ["\"web\"", "\"worker\""]);
        // A table's span is its header.
        let worker = config.simulations["worker"].span();
        assert_eq!(&text[worker], "[simulations.worker]");
    }

    #[test]
    fn only_plain_layouts_are_split() {
        let split = |text: &str| elements(text, &headers(text).unwrap());
        let text = "a = 1\n[[scalers]]\n[scalers.target]\n[api]\n[simulations.web]\n[simulations.web.load]\n[[scalers]]\n";
        let found = split(text).unwrap();
        let kinds: Vec<_> = found
            .iter()
            .map(|e| (e.kind, &text[e.range.clone()]))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (Kind::Scaler, "[[scalers]]\n[scalers.target]\n"),
                (
                    Kind::Simulation,
                    "[simulations.web]\n[simulations.web.load]\n"
                ),
                (Kind::Scaler, "[[scalers]]\n"),
            ]
        );
        // A scaler's table away from its scaler, a simulation in two
        // places, `[simulations]` itself: parsed whole.
        assert_eq!(split("[[scalers]]\n[api]\n[scalers.target]\n"), None);
        assert_eq!(
            split("[simulations.a]\n[api]\n[simulations.a.load]\n"),
            None
        );
        assert_eq!(split("[simulations]\n"), None);
    }
}
