//! Reading the config file: its top level and its role sections, older key names mapped to
//! today's, and every key checked against the settings of the part that reads it.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::de::DeserializeOwned;

/// The role sections a file may have.
const SECTIONS: [&str; 4] = ["storage", "tracker", "edge", "live"];

/// Integer keys from before durations carried their unit, and the keys they now are.
const OLDER_DURATIONS: [(&str, &str, &str); 12] = [
    ("shutdown_grace_secs", "shutdown_grace", "s"),
    ("header_read_timeout_secs", "header_read_timeout", "s"),
    ("body_idle_timeout_secs", "body_idle_timeout", "s"),
    ("heartbeat_interval_ms", "heartbeat_interval", "ms"),
    ("scrub_interval_secs", "scrub_interval", "s"),
    ("replication_timeout_ms", "replication_timeout", "ms"),
    ("catch_up_interval_ms", "catch_up_interval", "ms"),
    ("abandon_after_ms", "abandon_after", "ms"),
    ("hook_timeout_ms", "hook_timeout", "ms"),
    ("rtmp_idle_timeout_secs", "rtmp_idle_timeout", "s"),
    ("hls_target_secs", "hls_target", "s"),
    ("offline_after_ms", "offline_after", "ms"),
];

/// A config file, read and split; empty without `--config`.
#[derive(Debug, Clone, Default)]
pub struct ConfigFile {
    path: Option<PathBuf>,
    top: toml::Table,
    sections: toml::Table,
}

impl ConfigFile {
    /// Reads `path` (nothing when `None`), maps older keys, and checks every section with
    /// `check` (each role's keys), so a misspelt key anywhere fails now, by name.
    pub fn read(path: Option<&Path>) -> anyhow::Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading config {}", path.display()))?;
        Self::parse(&text, Some(path.to_owned()))
    }

    pub(super) fn parse(text: &str, path: Option<PathBuf>) -> anyhow::Result<Self> {
        let shown = path.as_deref().map_or_else(
            || "config".to_owned(),
            |p| format!("config {}", p.display()),
        );
        let mut top: toml::Table = toml::from_str(text).with_context(|| shown.clone())?;
        let mut sections = toml::Table::new();
        for name in SECTIONS {
            match top.remove(name) {
                None => {}
                Some(toml::Value::Table(mut table)) => {
                    map_older_keys(&mut table).with_context(|| format!("{shown}: [{name}]"))?;
                    sections.insert(name.to_owned(), toml::Value::Table(table));
                }
                Some(_) => anyhow::bail!("{shown}: `{name}` must be a section, [{name}]"),
            }
        }
        map_older_keys(&mut top).with_context(|| shown.clone())?;
        let file = Self {
            path,
            top,
            sections,
        };
        file.check_sections()?;
        Ok(file)
    }

    /// `config FILE` (or `config`), for error messages.
    pub fn name(&self) -> String {
        self.path.as_deref().map_or_else(
            || "config".to_owned(),
            |p| format!("config {}", p.display()),
        )
    }

    /// The top-level keys.
    pub fn top(&self) -> toml::Table {
        self.top.clone()
    }

    /// A role's section (empty when the file has none).
    pub fn section(&self, name: &str) -> toml::Table {
        match self.sections.get(name) {
            Some(toml::Value::Table(t)) => t.clone(),
            _ => toml::Table::new(),
        }
    }

    /// The top level against `serve`'s keys, and every section against the keys of its
    /// role: whichever role reads the file, a key no role knows is refused.
    fn check_sections(&self) -> anyhow::Result<()> {
        let mut top = self.top();
        let at = self.name();
        take::<super::serve::NodeKeys>(&mut top, &at)?;
        take::<super::HttpKeys>(&mut top, &at)?;
        take::<super::live::LiveKeys>(&mut top, &at)?;
        take::<super::tracker::RoutingKeys>(&mut top, &at)?;
        no_more(top, &at)?;
        let mut storage = self.section("storage");
        take::<super::serve::NodeKeys>(&mut storage, &self.at("storage"))?;
        take::<super::HttpKeys>(&mut storage, &self.at("storage"))?;
        no_more(storage, &self.at("storage"))?;
        super::tracker::TrackerKeys::from_table(self.section("tracker"), &self.at("tracker"))?;
        super::edge::EdgeKeys::from_table(self.section("edge"), &self.at("edge"))?;
        super::live::LiveRoleKeys::from_table(self.section("live"), &self.at("live"))?;
        Ok(())
    }

    /// `config FILE: [section]`, for error messages.
    pub fn at(&self, section: &str) -> String {
        format!("{}: [{section}]", self.name())
    }
}

/// `table` with `over`'s keys laid over it, those `only` names if given.
pub fn overlay(table: &mut toml::Table, over: toml::Table, only: Option<&[&str]>) {
    for (key, value) in over {
        if only.is_none_or(|names| names.contains(&key.as_str())) {
            table.insert(key, value);
        }
    }
}

/// Takes the keys of `T` out of `table` and reads them (defaults for those missing).
pub fn take<T: DeserializeOwned>(table: &mut toml::Table, at: &str) -> anyhow::Result<T> {
    let mut mine = toml::Table::new();
    for name in fields_of::<T>() {
        if let Some(value) = table.remove(*name) {
            mine.insert((*name).to_owned(), value);
        }
    }
    T::deserialize(toml::Value::Table(mine)).with_context(|| at.to_owned())
}

/// Fails on the first key no part took, by name (and by its older name, if it had one).
pub fn no_more(table: toml::Table, at: &str) -> anyhow::Result<()> {
    let Some(key) = table.keys().next() else {
        return Ok(());
    };
    match OLDER_DURATIONS.iter().find(|(_, newer, _)| newer == key) {
        Some((older, _, _)) => anyhow::bail!("{at}: unknown key `{key}` (or `{older}`) here"),
        None => anyhow::bail!("{at}: unknown key `{key}`"),
    }
}

/// The names of `T`'s fields, as serde sees them.
pub fn fields_of<T: DeserializeOwned>() -> &'static [&'static str] {
    let mut fields: &'static [&'static str] = &[];
    let _ = T::deserialize(FieldProbe(&mut fields));
    fields
}

/// Rewrites older integer duration keys (`heartbeat_interval_ms = 2000`) as today's
/// (`heartbeat_interval = "2000ms"`).
fn map_older_keys(table: &mut toml::Table) -> anyhow::Result<()> {
    for (older, newer, unit) in OLDER_DURATIONS {
        let Some(value) = table.remove(older) else {
            continue;
        };
        anyhow::ensure!(
            !table.contains_key(newer),
            "`{older}` and `{newer}` both given; keep `{newer}`"
        );
        let n = value.as_integer().filter(|n| *n >= 0).with_context(|| {
            format!("`{older}` must be a whole number; or use `{newer} = \"2s\"`")
        })?;
        table.insert(newer.to_owned(), toml::Value::String(format!("{n}{unit}")));
    }
    Ok(())
}

/// A deserializer that only notes the field names a struct asks for.
struct FieldProbe<'a>(&'a mut &'static [&'static str]);

impl<'de> serde::Deserializer<'de> for FieldProbe<'_> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(self, _: V) -> Result<V::Value, Self::Error> {
        Err(serde::de::Error::custom("not a struct"))
    }

    fn deserialize_struct<V: serde::de::Visitor<'de>>(
        self,
        _name: &'static str,
        fields: &'static [&'static str],
        _: V,
    ) -> Result<V::Value, Self::Error> {
        *self.0 = fields;
        Err(serde::de::Error::custom("probed"))
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf
        option unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier
        ignored_any
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn older_duration_keys_are_mapped_and_both_at_once_refused() {
        let file = ConfigFile::parse("heartbeat_interval_ms = 500\n", None).unwrap();
        assert_eq!(
            file.top()
                .get("heartbeat_interval")
                .and_then(|v| v.as_str()),
            Some("500ms")
        );
        let both = ConfigFile::parse(
            "heartbeat_interval_ms = 500\nheartbeat_interval = \"1s\"\n",
            None,
        )
        .unwrap_err();
        assert!(format!("{both:#}").contains("both given"), "{both:#}");
        let words = ConfigFile::parse("[tracker]\noffline_after_ms = \"6s\"\n", None).unwrap_err();
        assert!(
            format!("{words:#}").contains("offline_after_ms"),
            "{words:#}"
        );
    }

    #[test]
    fn a_misspelt_key_in_any_section_is_refused_by_name() {
        for (text, name) in [
            ("[edge]\ncache_sise = \"1GiB\"\n", "cache_sise"),
            ("[tracker]\nplacment = \"most-free\"\n", "placment"),
            ("[live]\non_publsh = \"http://x\"\n", "on_publsh"),
            ("[storage]\nmin_copie = 2\n", "min_copie"),
        ] {
            let e = ConfigFile::parse(text, None).unwrap_err();
            assert!(format!("{e:#}").contains(name), "{text}: {e:#}");
        }
        let e = ConfigFile::parse("edge = 3\n", None).unwrap_err();
        assert!(format!("{e:#}").contains("[edge]"), "{e:#}");
    }

    #[test]
    fn the_probe_sees_every_field() {
        #[derive(serde::Deserialize)]
        #[allow(dead_code)]
        struct Two {
            a: u8,
            b: String,
        }
        assert_eq!(fields_of::<Two>(), ["a", "b"]);
    }
}
