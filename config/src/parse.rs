//! One file's text → the keys it sets, checked against the schema.
//!
//! The document is parsed into toml's spanned [`DeTable`] and walked by hand
//! against the known key set, rather than deserialized with serde, so that an
//! unknown key, a wrong type and an invalid value each point at the file, line
//! and key path where they were written. Every value is validated here, in its
//! own file: no check needs more than one file (arrays are replaced wholesale
//! by a later file, never merged), so the merged result is valid by
//! construction.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::IntoDeserializer;
use toml::Spanned;
use toml::de::{DeTable, DeValue};

use crate::error::{ConfigError, Location};
use crate::{Config, HoldMode, MAX_TIMEOUT_S, MIN_TIMEOUT_S, UnitPolicy};

/// The keys one file sets; `None` = not set in this file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct Partial {
    pub(crate) units: Option<Vec<String>>,
    pub(crate) image_dir: Option<PathBuf>,
    pub(crate) image_dir_forbidden_filesystems: Option<Vec<String>>,
    pub(crate) checkpoint_s: Option<u32>,
    pub(crate) restore_s: Option<u32>,
    pub(crate) kexec_s: Option<u32>,
    pub(crate) hold: Option<HoldMode>,
    pub(crate) disable_window_scaling_during_restore: Option<bool>,
    pub(crate) append: Option<Vec<String>>,
    /// `[policy]` entries this file sets, each replacing the same unit's.
    pub(crate) policy: Vec<(String, UnitPolicy)>,
}

impl Partial {
    /// Overrides the keys this file sets; leaves the others as they are.
    pub(crate) fn apply_to(self, config: &mut Config) {
        if let Some(v) = self.units {
            config.units = v;
        }
        if let Some(v) = self.image_dir {
            config.image_dir = v;
        }
        if let Some(v) = self.image_dir_forbidden_filesystems {
            config.image_dir_forbidden_filesystems = v;
        }
        if let Some(v) = self.checkpoint_s {
            config.timeouts.checkpoint_s = v;
        }
        if let Some(v) = self.restore_s {
            config.timeouts.restore_s = v;
        }
        if let Some(v) = self.kexec_s {
            config.timeouts.kexec_s = v;
        }
        if let Some(v) = self.hold {
            config.network.hold = v;
        }
        if let Some(v) = self.disable_window_scaling_during_restore {
            config.network.disable_window_scaling_during_restore = v;
        }
        if let Some(v) = self.append {
            config.kernel.append = v;
        }
        config.policy.extend(self.policy);
    }
}

/// 1-based line of byte `offset` in `text`. An offset at the very end of a
/// file that ends in a newline (where the parser reports "unexpected end")
/// is attributed to the last line rather than to the empty line after it.
pub(crate) fn line_of(text: &[u8], offset: usize) -> usize {
    let mut offset = offset.min(text.len());
    if offset == text.len() && offset > 0 && text[offset - 1] == b'\n' {
        offset -= 1;
    }
    text[..offset].iter().filter(|&&b| b == b'\n').count() + 1
}

/// Parses and validates one file. `path` is only used in error messages.
pub(crate) fn parse_file(path: &Path, text: &str) -> Result<Partial, ConfigError> {
    let doc = DeTable::parse(text).map_err(|e| ConfigError::Syntax {
        at: Location {
            path: path.to_path_buf(),
            line: line_of(text.as_bytes(), e.span().map_or(0, |s| s.start)),
        },
        message: e.message().to_owned(),
    })?;
    let mut walker = Walker {
        path,
        text,
        errors: Vec::new(),
    };
    let partial = walker.document(doc.get_ref());
    // The map iterates keys alphabetically; report what comes first in the
    // file, which is what an operator fixing errors top-down expects.
    match walker
        .errors
        .into_iter()
        .enumerate()
        .min_by_key(|(i, e)| (e.location().map_or(0, |l| l.line), *i))
    {
        Some((_, first)) => Err(first),
        None => Ok(partial),
    }
}

type Value<'i> = Spanned<DeValue<'i>>;

struct Walker<'a> {
    path: &'a Path,
    text: &'a str,
    errors: Vec<ConfigError>,
}

/// `parent.key`, quoting a key that is not a bare TOML key so the path stays
/// unambiguous.
fn key_path(parent: &str, key: &str) -> String {
    let bare = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if bare {
        key.to_owned()
    } else {
        format!("{key:?}")
    };
    if parent.is_empty() {
        key
    } else {
        format!("{parent}.{key}")
    }
}

impl Walker<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        Location {
            path: self.path.to_path_buf(),
            line: line_of(self.text.as_bytes(), span.start),
        }
    }

    fn unknown(&mut self, parent: &str, key: &Spanned<std::borrow::Cow<'_, str>>) {
        self.errors.push(ConfigError::UnknownKey {
            at: self.at(key.span()),
            key: key_path(parent, key.get_ref()),
        });
    }

    fn wrong_type(&mut self, key: &str, value: &Value<'_>, expected: &'static str) {
        self.errors.push(ConfigError::WrongType {
            at: self.at(value.span()),
            key: key.to_owned(),
            expected,
            found: value.get_ref().type_str(),
        });
    }

    fn document(&mut self, doc: &DeTable<'_>) -> Partial {
        let mut p = Partial::default();
        for (key, value) in doc.iter() {
            match key.get_ref().as_ref() {
                "units" => p.units = self.units("units", value),
                "image_dir" => p.image_dir = self.absolute_path("image_dir", value),
                "image_dir_forbidden_filesystems" => {
                    p.image_dir_forbidden_filesystems = self
                        .strings("image_dir_forbidden_filesystems", value)
                        .map(|items| items.into_iter().map(|(s, _)| s.to_owned()).collect());
                }
                "timeouts" => {
                    if let Some(table) = self.table("timeouts", value) {
                        for (key, value) in table.iter() {
                            let path = key_path("timeouts", key.get_ref());
                            match key.get_ref().as_ref() {
                                "checkpoint_s" => p.checkpoint_s = self.timeout(&path, value),
                                "restore_s" => p.restore_s = self.timeout(&path, value),
                                "kexec_s" => p.kexec_s = self.timeout(&path, value),
                                _ => self.unknown("timeouts", key),
                            }
                        }
                    }
                }
                "network" => {
                    if let Some(table) = self.table("network", value) {
                        for (key, value) in table.iter() {
                            let path = key_path("network", key.get_ref());
                            match key.get_ref().as_ref() {
                                "hold" => p.hold = self.variant::<HoldMode>(&path, value),
                                "disable_window_scaling_during_restore" => {
                                    p.disable_window_scaling_during_restore =
                                        self.boolean(&path, value);
                                }
                                _ => self.unknown("network", key),
                            }
                        }
                    }
                }
                "kernel" => {
                    if let Some(table) = self.table("kernel", value) {
                        for (key, value) in table.iter() {
                            let path = key_path("kernel", key.get_ref());
                            match key.get_ref().as_ref() {
                                "append" => p.append = self.kernel_args(&path, value),
                                _ => self.unknown("kernel", key),
                            }
                        }
                    }
                }
                "policy" => {
                    if let Some(table) = self.table("policy", value) {
                        for (key, value) in table.iter() {
                            let unit = key.get_ref().as_ref();
                            let path = key_path("policy", unit);
                            if let Err(reason) = check_unit_name(unit) {
                                self.errors.push(ConfigError::InvalidUnitName {
                                    at: self.at(key.span()),
                                    key: path,
                                    name: unit.to_owned(),
                                    reason,
                                });
                            } else if let Some(policy) = self.variant::<UnitPolicy>(&path, value) {
                                p.policy.push((unit.to_owned(), policy));
                            }
                        }
                    }
                }
                _ => self.unknown("", key),
            }
        }
        p
    }

    fn table<'v, 'i>(&mut self, key: &str, value: &'v Value<'i>) -> Option<&'v DeTable<'i>> {
        match value.get_ref() {
            DeValue::Table(t) => Some(t),
            _ => {
                self.wrong_type(key, value, "table");
                None
            }
        }
    }

    fn string<'v>(&mut self, key: &str, value: &'v Value<'_>) -> Option<&'v str> {
        match value.get_ref() {
            DeValue::String(s) => Some(s),
            _ => {
                self.wrong_type(key, value, "string");
                None
            }
        }
    }

    fn boolean(&mut self, key: &str, value: &Value<'_>) -> Option<bool> {
        match value.get_ref() {
            DeValue::Boolean(b) => Some(*b),
            _ => {
                self.wrong_type(key, value, "boolean");
                None
            }
        }
    }

    /// An array of strings, each with its span. `None` after reporting an
    /// error for the array itself or any element.
    fn strings<'v>(
        &mut self,
        key: &str,
        value: &'v Value<'_>,
    ) -> Option<Vec<(&'v str, Range<usize>)>> {
        let DeValue::Array(items) = value.get_ref() else {
            self.wrong_type(key, value, "array of strings");
            return None;
        };
        let mut out = Vec::with_capacity(items.len());
        let mut ok = true;
        for (i, item) in items.iter().enumerate() {
            match item.get_ref() {
                DeValue::String(s) => out.push((s.as_ref(), item.span())),
                _ => {
                    self.wrong_type(&format!("{key}[{i}]"), item, "string");
                    ok = false;
                }
            }
        }
        ok.then_some(out)
    }

    fn timeout(&mut self, key: &str, value: &Value<'_>) -> Option<u32> {
        let DeValue::Integer(int) = value.get_ref() else {
            self.wrong_type(key, value, "integer (seconds)");
            return None;
        };
        let parsed = i64::from_str_radix(int.as_str(), int.radix()).ok();
        match parsed {
            Some(n) if (i64::from(MIN_TIMEOUT_S)..=i64::from(MAX_TIMEOUT_S)).contains(&n) => {
                u32::try_from(n).ok()
            }
            _ => {
                self.errors.push(ConfigError::OutOfRange {
                    at: self.at(value.span()),
                    key: key.to_owned(),
                    min: MIN_TIMEOUT_S.into(),
                    max: MAX_TIMEOUT_S.into(),
                    value: parsed.map_or_else(|| int.to_string(), |n| n.to_string()),
                });
                None
            }
        }
    }

    fn absolute_path(&mut self, key: &str, value: &Value<'_>) -> Option<PathBuf> {
        let s = self.string(key, value)?;
        if s.starts_with('/') {
            Some(PathBuf::from(s))
        } else {
            self.errors.push(ConfigError::RelativePath {
                at: self.at(value.span()),
                key: key.to_owned(),
                value: s.to_owned(),
            });
            None
        }
    }

    /// A string naming one variant of an enum (its serde spelling).
    fn variant<T: for<'de> Deserialize<'de>>(&mut self, key: &str, value: &Value<'_>) -> Option<T> {
        let s = self.string(key, value)?;
        let de: serde::de::value::StrDeserializer<'_, serde::de::value::Error> =
            s.into_deserializer();
        match T::deserialize(de) {
            Ok(variant) => Some(variant),
            Err(e) => {
                self.errors.push(ConfigError::UnknownVariant {
                    at: self.at(value.span()),
                    key: key.to_owned(),
                    message: e.to_string(),
                });
                None
            }
        }
    }

    fn units(&mut self, key: &str, value: &Value<'_>) -> Option<Vec<String>> {
        let items = self.strings(key, value)?;
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut ok = true;
        for (i, (name, span)) in items.iter().enumerate() {
            let at = self.at(span.clone());
            let elem = format!("{key}[{i}]");
            if let Err(reason) = check_unit_name(name) {
                self.errors.push(ConfigError::InvalidUnitName {
                    at,
                    key: elem,
                    name: (*name).to_owned(),
                    reason,
                });
                ok = false;
            } else if let Some(&first_line) = seen.get(name) {
                self.errors.push(ConfigError::DuplicateUnit {
                    at,
                    key: elem,
                    name: (*name).to_owned(),
                    first_line,
                });
                ok = false;
            } else {
                seen.insert(name, at.line);
            }
        }
        ok.then(|| items.into_iter().map(|(s, _)| s.to_owned()).collect())
    }

    fn kernel_args(&mut self, key: &str, value: &Value<'_>) -> Option<Vec<String>> {
        let items = self.strings(key, value)?;
        let mut ok = true;
        for (i, (arg, span)) in items.iter().enumerate() {
            let reason = if arg.is_empty() {
                Some("must not be empty")
            } else if arg.chars().any(char::is_control) {
                Some("must not contain control characters (one argument per array element)")
            } else {
                None
            };
            if let Some(reason) = reason {
                self.errors.push(ConfigError::InvalidKernelArg {
                    at: self.at(span.clone()),
                    key: format!("{key}[{i}]"),
                    value: arg.escape_debug().to_string(),
                    reason,
                });
                ok = false;
            }
        }
        ok.then(|| items.into_iter().map(|(s, _)| s.to_owned()).collect())
    }
}

/// Checks a name against systemd's rules for unit names (`unit_name_is_valid`
/// in systemd's `unit-name.c`), restricted to service units that can be
/// running: plain names and template instances, not templates themselves.
pub(crate) fn check_unit_name(name: &str) -> Result<(), &'static str> {
    const SUFFIX: &str = ".service";
    const MAX_LEN: usize = 255;
    if name.len() > MAX_LEN {
        return Err("longer than 255 characters");
    }
    if name.starts_with('.') {
        return Err("must not start with a dot");
    }
    if let Some(c) = name
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '\\' | '@')))
    {
        return Err(if c.is_whitespace() {
            "contains whitespace; allowed are letters, digits and `:-_.\\@`"
        } else {
            "contains a character other than letters, digits and `:-_.\\@`"
        });
    }
    let Some(stem) = name.strip_suffix(SUFFIX) else {
        return Err("must end in `.service` (only service units can be preserved)");
    };
    if stem.is_empty() {
        return Err("has no name before `.service`");
    }
    if let Some((prefix, instance)) = stem.split_once('@') {
        if prefix.is_empty() {
            return Err("has no name before `@`");
        }
        if instance.is_empty() {
            return Err("is a template; name a running instance such as `name@instance.service`");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Partial, ConfigError> {
        parse_file(Path::new("/test/config.toml"), text)
    }

    fn err(text: &str) -> String {
        match parse(text) {
            Ok(p) => panic!("expected an error, parsed {p:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn line_of_counts_from_one() {
        assert_eq!(line_of(b"a\nb\nc", 0), 1);
        assert_eq!(line_of(b"a\nb\nc", 2), 2);
        assert_eq!(line_of(b"a\nb\nc", 4), 3);
        assert_eq!(
            line_of(b"a\nb\n", 4),
            2,
            "EOF after final newline is the last line"
        );
        assert_eq!(line_of(b"", 0), 1);
    }

    #[test]
    fn full_document_sets_every_key() {
        let p = parse(
            r#"
units = ["a.service", "b@1.service"]
image_dir = "/srv/images"
image_dir_forbidden_filesystems = ["nfs4"]
[timeouts]
checkpoint_s = 30
restore_s = 0x10
kexec_s = 3_600
[network]
hold = "drop"
disable_window_scaling_during_restore = false
[kernel]
append = ["quiet", "console=ttyS0"]
[policy]
"nginx.service" = "restart"
"cups.service" = "skip"
"#,
        )
        .expect("valid");
        assert_eq!(
            p,
            Partial {
                units: Some(vec!["a.service".into(), "b@1.service".into()]),
                image_dir: Some("/srv/images".into()),
                image_dir_forbidden_filesystems: Some(vec!["nfs4".into()]),
                checkpoint_s: Some(30),
                restore_s: Some(16),
                kexec_s: Some(3600),
                hold: Some(HoldMode::Drop),
                disable_window_scaling_during_restore: Some(false),
                append: Some(vec!["quiet".into(), "console=ttyS0".into()]),
                policy: vec![
                    ("cups.service".into(), UnitPolicy::Skip),
                    ("nginx.service".into(), UnitPolicy::Restart),
                ],
            }
        );
    }

    #[test]
    fn policy_names_units_and_one_of_three_words() {
        assert_eq!(
            err("[policy]\n\"nginx\" = \"restart\"\n"),
            "/test/config.toml:2: policy.nginx: invalid unit name `nginx`: must end in `.service` (only service units can be preserved)"
        );
        assert_eq!(
            err("[policy]\n\"a.service\" = \"later\"\n"),
            "/test/config.toml:2: policy.\"a.service\": unknown variant `later`, expected one of `preserve`, `restart`, `skip`"
        );
        assert_eq!(
            err("policy = { \"a.service\" = 1 }\n"),
            "/test/config.toml:1: policy.\"a.service\": expected string, got integer"
        );
    }

    #[test]
    fn dotted_and_inline_tables_are_the_same_keys() {
        let p = parse("timeouts.restore_s = 5\nnetwork = { hold = \"queue\" }\n").expect("valid");
        assert_eq!(p.restore_s, Some(5));
        assert_eq!(p.hold, Some(HoldMode::Queue));
        assert_eq!(p.checkpoint_s, None);
    }

    #[test]
    fn unknown_keys_at_every_level() {
        assert_eq!(
            err("\n\nfoo = 1\n"),
            "/test/config.toml:3: unknown key `foo`"
        );
        assert_eq!(
            err("[timeouts]\nchekpoint_s = 5\n"),
            "/test/config.toml:2: unknown key `timeouts.chekpoint_s`"
        );
        assert_eq!(
            err("[network]\n\"a b\" = 1\n"),
            "/test/config.toml:2: unknown key `network.\"a b\"`"
        );
        assert_eq!(
            err("\n[extra]\nx = 1\n"),
            "/test/config.toml:2: unknown key `extra`"
        );
        assert_eq!(
            err("[kernel]\nappend = []\ncmdline = \"x\"\n"),
            "/test/config.toml:3: unknown key `kernel.cmdline`"
        );
    }

    #[test]
    fn first_error_in_file_order_wins() {
        // `zzz` sorts after `aaa` but comes first in the file.
        assert_eq!(
            err("zzz = 1\naaa = 2\n"),
            "/test/config.toml:1: unknown key `zzz`"
        );
    }

    #[test]
    fn type_errors_name_key_and_types() {
        assert_eq!(
            err("[timeouts]\nrestore_s = \"60\"\n"),
            "/test/config.toml:2: timeouts.restore_s: expected integer (seconds), got string"
        );
        assert_eq!(
            err("[timeouts]\nrestore_s = 1.5\n"),
            "/test/config.toml:2: timeouts.restore_s: expected integer (seconds), got float"
        );
        assert_eq!(
            err("timeouts = 5\n"),
            "/test/config.toml:1: timeouts: expected table, got integer"
        );
        assert_eq!(
            err("units = \"a.service\"\n"),
            "/test/config.toml:1: units: expected array of strings, got string"
        );
        assert_eq!(
            err("units = [\n  \"a.service\",\n  7,\n]\n"),
            "/test/config.toml:3: units[1]: expected string, got integer"
        );
        assert_eq!(
            err("[network]\ndisable_window_scaling_during_restore = \"yes\"\n"),
            "/test/config.toml:2: network.disable_window_scaling_during_restore: expected boolean, got string"
        );
        assert_eq!(
            err("image_dir = 3\n"),
            "/test/config.toml:1: image_dir: expected string, got integer"
        );
    }

    #[test]
    fn timeout_range() {
        assert_eq!(
            err("[timeouts]\nkexec_s = -1\n"),
            "/test/config.toml:2: timeouts.kexec_s: must be between 1 and 3600, got -1"
        );
        assert_eq!(
            err("[timeouts]\nkexec_s = 3601\n"),
            "/test/config.toml:2: timeouts.kexec_s: must be between 1 and 3600, got 3601"
        );
        assert_eq!(
            err("[timeouts]\nkexec_s = 0x7fffffffffffffff\n"),
            "/test/config.toml:2: timeouts.kexec_s: must be between 1 and 3600, got 9223372036854775807"
        );
        assert_eq!(
            parse("timeouts.kexec_s = 1").expect("valid").kexec_s,
            Some(1)
        );
    }

    #[test]
    fn unit_name_rules() {
        for good in [
            "a.service",
            "a-b_c:d\\x2d.service",
            "getty@tty1.service",
            "a@b@c.service",
        ] {
            assert_eq!(check_unit_name(good), Ok(()), "{good}");
        }
        let long = format!("{}.service", "a".repeat(248));
        assert_eq!(long.len(), 256);
        for (bad, reason) in [
            ("a.socket", "must end in"),
            ("a", "must end in"),
            (".service", "must not start with a dot"),
            (".a.service", "must not start with a dot"),
            ("a b.service", "whitespace"),
            ("a/b.service", "character other than"),
            ("ä.service", "character other than"),
            ("@x.service", "no name before `@`"),
            ("getty@.service", "template"),
            (long.as_str(), "longer than 255"),
        ] {
            match check_unit_name(bad) {
                Ok(()) => panic!("{bad} accepted"),
                Err(r) => assert!(r.contains(reason), "{bad}: {r}"),
            }
        }
        assert_eq!(
            check_unit_name(&long[1..]),
            Ok(()),
            "255 characters are allowed"
        );
    }

    #[test]
    fn kernel_args_checked() {
        assert_eq!(
            err("[kernel]\nappend = [\"quiet\", \"\"]\n"),
            "/test/config.toml:2: kernel.append[1]: invalid kernel command line argument ``: must not be empty"
        );
        assert!(
            err("kernel.append = [\"a\\nb\"]")
                .contains("`a\\nb`: must not contain control characters")
        );
    }

    #[test]
    fn syntax_error_reports_line() {
        let e = parse("units = []\n\n[timeouts\ncheckpoint_s = 1\n").expect_err("bad syntax");
        assert_eq!(e.location().map(|l| l.line), Some(3), "{e}");
        assert!(
            e.to_string()
                .starts_with("/test/config.toml:3: TOML syntax error: "),
            "{e}"
        );
        let e = parse("a = 1\na = 2\n").expect_err("duplicate key");
        assert_eq!(
            e.to_string(),
            "/test/config.toml:2: TOML syntax error: duplicate key"
        );
    }
}
