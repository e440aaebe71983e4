//! Reflow's `File` and `Fileset` values, with their JSON shapes and digests.
//!
//! A [`File`] is *resolved* when its `ID` (content digest) is set, and a *reference* otherwise (a
//! `Source` URL, ETag and size that name content not yet fetched). A [`Fileset`] is a tree: a list
//! of filesets and/or a map of relative path to file. A single output is `{".": file}`.
//!
//! Fileset keys arrive from producers and are untrusted: [`Fileset::validate_paths`] rejects
//! anything [`crate::relpath::validate`] rejects, and every filesystem join goes through
//! [`crate::relpath::join`].

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use serde::{Deserialize, Deserializer, Serialize};
use thiserror::Error;

use crate::digest::{Digest, Hasher};
use crate::error::{Classify, Kind};
use crate::relpath::{self, PathError};
use crate::time::{self, Time};

/// Deserializes JSON `null` as the type's default (Go writes `null` for nil slices and maps).
pub(crate) fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Identifies a set of assertions: a namespace (e.g. `blob`) and a subject (e.g. a URL).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AssertionKey {
    /// Namespace, compared first.
    pub namespace: String,
    /// Subject, compared second.
    pub subject: String,
}

/// Assertions about a reference's source (e.g. its ETag), part of a reference's digest.
///
/// JSON (Reflow's `Assertions.MarshalJSON`): a list of entries
/// `{"Key": {"Namespace", "Subject", "Object"}, "Value"}` ordered by namespace, subject and object,
/// each string omitted when empty.
pub type Assertions = BTreeMap<AssertionKey, BTreeMap<String, String>>;

/// Serde `with` module for `Option<Assertions>` in Reflow's entry-list form.
mod assertions_json {
    use super::*;
    use serde::Serializer;

    #[derive(Serialize, Deserialize, Default)]
    struct EntryKey {
        #[serde(
            rename = "Namespace",
            default,
            skip_serializing_if = "String::is_empty"
        )]
        namespace: String,
        #[serde(rename = "Subject", default, skip_serializing_if = "String::is_empty")]
        subject: String,
        #[serde(rename = "Object", default, skip_serializing_if = "String::is_empty")]
        object: String,
    }

    #[derive(Serialize, Deserialize)]
    struct Entry {
        #[serde(rename = "Key", default)]
        key: EntryKey,
        #[serde(rename = "Value", default, skip_serializing_if = "String::is_empty")]
        value: String,
    }

    pub(super) fn serialize<S: Serializer>(
        a: &Option<Assertions>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry> = a
            .iter()
            .flatten()
            .flat_map(|(k, props)| {
                props.iter().map(|(object, value)| Entry {
                    key: EntryKey {
                        namespace: k.namespace.clone(),
                        subject: k.subject.clone(),
                        object: object.clone(),
                    },
                    value: value.clone(),
                })
            })
            .collect();
        entries.serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Assertions>, D::Error> {
        let Some(entries) = Option::<Vec<Entry>>::deserialize(d)? else {
            return Ok(None);
        };
        let mut out = Assertions::new();
        for e in entries {
            let key = AssertionKey {
                namespace: e.key.namespace,
                subject: e.key.subject,
            };
            let props = out.entry(key).or_default();
            match props.get(&e.key.object) {
                Some(v) if *v != e.value => {
                    return Err(serde::de::Error::custom(format!(
                        "conflicting assertions for object {:?}",
                        e.key.object
                    )));
                }
                _ => {
                    props.insert(e.key.object, e.value);
                }
            }
        }
        Ok(Some(out))
    }
}

/// A file: resolved (content digest known) or a reference to content at a source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct File {
    /// Content digest; zero for a reference.
    #[serde(rename = "ID", default)]
    pub id: Digest,
    /// Size in bytes.
    #[serde(rename = "Size", default)]
    pub size: u64,
    /// Source URL of a reference (or where a resolved file came from).
    #[serde(rename = "Source", default, skip_serializing_if = "String::is_empty")]
    pub source: String,
    /// The source's ETag.
    #[serde(rename = "ETag", default, skip_serializing_if = "String::is_empty")]
    pub etag: String,
    /// The source's last-modified time (Go's zero time when unknown).
    #[serde(rename = "LastModified", with = "time::go", default = "time::zero")]
    pub last_modified: Time,
    /// Known content digest of a reference (zero when unknown).
    #[serde(rename = "ContentHash", default)]
    pub content_hash: Digest,
    /// Assertions about the source; part of a reference's digest.
    #[serde(
        rename = "Assertions",
        default,
        skip_serializing_if = "Option::is_none",
        with = "assertions_json"
    )]
    pub assertions: Option<Assertions>,
}

impl Default for File {
    fn default() -> Self {
        File {
            id: Digest::ZERO,
            size: 0,
            source: String::new(),
            etag: String::new(),
            last_modified: time::zero(),
            content_hash: Digest::ZERO,
            assertions: None,
        }
    }
}

impl File {
    /// A resolved file with content digest `id` and `size` bytes.
    pub fn resolved(id: Digest, size: u64) -> Self {
        File {
            id,
            size,
            ..File::default()
        }
    }

    /// A reference to `source`.
    pub fn reference(source: impl Into<String>, etag: impl Into<String>, size: u64) -> Self {
        File {
            source: source.into(),
            etag: etag.into(),
            size,
            ..File::default()
        }
    }

    /// Whether this is a reference (no content digest).
    pub fn is_ref(&self) -> bool {
        self.id.is_zero()
    }

    /// The file's digest: the content digest when resolved; else the content hash when known;
    /// else SHA-256 over the size (8 bytes little-endian), source, ETag and assertion material.
    pub fn digest(&self) -> Digest {
        if !self.is_ref() {
            return self.id;
        }
        if !self.content_hash.is_zero() {
            return self.content_hash;
        }
        let mut h = Hasher::new();
        h.update(&self.size.to_le_bytes());
        h.update(self.source.as_bytes());
        h.update(self.etag.as_bytes());
        if let Some(a) = &self.assertions {
            for (key, props) in a {
                for (name, value) in props {
                    h.update(key.subject.as_bytes());
                    h.update(key.namespace.as_bytes());
                    h.update(name.as_bytes());
                    h.update(value.as_bytes());
                }
            }
        }
        h.finish().0
    }
}

/// Fileset operations that can fail.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum FilesetError {
    /// [`Fileset::file`] on a fileset that is not exactly one file at `.`.
    #[error("fileset is not a single file at \".\" (it has {n} files)")]
    NotSingleFile {
        /// Number of files in the fileset.
        n: usize,
    },
    /// A key is not a safe relative path.
    #[error("fileset key rejected")]
    Path(#[from] PathError),
}

impl Classify for FilesetError {
    fn kind(&self) -> Kind {
        match self {
            FilesetError::NotSingleFile { .. } => Kind::Precondition,
            FilesetError::Path(e) => e.kind(),
        }
    }
}

/// A tree of files: a list of filesets and/or a map from relative path to file.
///
/// As in Reflow, a fileset whose `List` is present (Go's non-nil slice, even an empty one) is a
/// list fileset: its digest, [`Fileset::flatten`] and [`Fileset::pullup`] follow the list, and a
/// map beside it does not enter the digest.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "FilesetWire")]
pub struct Fileset {
    /// Sub-filesets (one per output of a multi-output exec, or per element of a list value).
    #[serde(
        rename = "List",
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "null_default"
    )]
    pub list: Vec<Fileset>,
    /// Relative path to file; serialized under `Fileset` as Reflow does.
    #[serde(
        rename = "Fileset",
        default,
        skip_serializing_if = "BTreeMap::is_empty",
        deserialize_with = "null_default"
    )]
    pub map: BTreeMap<String, File>,
    /// Whether `List` was present although empty (`{"List": []}`); see the type's docs.
    #[serde(skip)]
    pub list_present: bool,
}

/// The JSON form of a [`Fileset`], which tells a `null` or absent `List` from an empty one.
#[derive(Deserialize)]
struct FilesetWire {
    #[serde(rename = "List", default)]
    list: Option<Vec<Fileset>>,
    #[serde(rename = "Fileset", default, deserialize_with = "null_default")]
    map: BTreeMap<String, File>,
}

impl From<FilesetWire> for Fileset {
    fn from(w: FilesetWire) -> Self {
        Fileset {
            list_present: w.list.is_some(),
            list: w.list.unwrap_or_default(),
            map: w.map,
        }
    }
}

impl Fileset {
    /// A fileset with one file at `.`.
    pub fn single(file: File) -> Self {
        Fileset::from_map(BTreeMap::from([(".".to_string(), file)]))
    }

    /// A map fileset.
    pub fn from_map(map: BTreeMap<String, File>) -> Self {
        Fileset {
            list: Vec::new(),
            map,
            list_present: false,
        }
    }

    /// A list fileset (a list fileset even when `list` is empty).
    pub fn from_list(list: Vec<Fileset>) -> Self {
        Fileset {
            list,
            map: BTreeMap::new(),
            list_present: true,
        }
    }

    /// Whether this is a list fileset: `List` is present, even if empty.
    pub fn is_list(&self) -> bool {
        self.list_present || !self.list.is_empty()
    }

    /// The list elements if this is a list, else a one-element list of this fileset.
    pub fn flatten(&self) -> Vec<&Fileset> {
        if !self.is_list() {
            vec![self]
        } else {
            self.list.iter().collect()
        }
    }

    /// Merges the tree into one map: own map first, then list elements in order, later keys
    /// overwriting earlier ones. A fileset without a list is returned as is.
    pub fn pullup(&self) -> Fileset {
        if !self.is_list() {
            return self.clone();
        }
        fn walk(fs: &Fileset, out: &mut BTreeMap<String, File>) {
            for (k, f) in &fs.map {
                out.insert(k.clone(), f.clone());
            }
            for sub in &fs.list {
                walk(sub, out);
            }
        }
        let mut map = BTreeMap::new();
        walk(self, &mut map);
        Fileset::from_map(map)
    }

    /// Visits every (path, file) in the tree, depth first, own map before list.
    pub fn for_each_file<'a>(&'a self, f: &mut impl FnMut(&'a str, &'a File)) {
        for (k, v) in &self.map {
            f(k, v);
        }
        for sub in &self.list {
            sub.for_each_file(f);
        }
    }

    /// All files, deduplicated by [`File::digest`], ordered by digest.
    pub fn files(&self) -> Vec<File> {
        let mut seen: BTreeMap<Digest, File> = BTreeMap::new();
        self.for_each_file(&mut |_, file| {
            seen.entry(file.digest()).or_insert_with(|| file.clone());
        });
        seen.into_values().collect()
    }

    /// Number of files, counting duplicates.
    pub fn n(&self) -> usize {
        self.map.len() + self.list.iter().map(Fileset::n).sum::<usize>()
    }

    /// Sum of file sizes, counting duplicates.
    pub fn size(&self) -> u64 {
        self.map.values().map(|f| f.size).sum::<u64>()
            + self.list.iter().map(Fileset::size).sum::<u64>()
    }

    /// Whether the tree has no files at all.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty() && self.list.iter().all(Fileset::is_empty)
    }

    /// Whether any file is a reference.
    pub fn has_refs(&self) -> bool {
        let mut any = false;
        self.for_each_file(&mut |_, f| any |= f.is_ref());
        any
    }

    /// The single file at `.`.
    ///
    /// # Errors
    /// [`FilesetError::NotSingleFile`] unless the fileset is exactly `{".": file}`.
    pub fn file(&self) -> Result<&File, FilesetError> {
        let n = self.n();
        match self.map.get(".") {
            Some(f) if n == 1 => Ok(f),
            _ => Err(FilesetError::NotSingleFile { n }),
        }
    }

    /// Rebuilds the tree, replacing every file whose [`File::digest`] is a key of `subst`.
    /// The flag is false if any reference was left unsubstituted.
    pub fn subst(&self, subst: &HashMap<Digest, File>) -> (Fileset, bool) {
        let mut resolved = true;
        let map = self
            .map
            .iter()
            .map(|(k, f)| {
                let f = match subst.get(&f.digest()) {
                    Some(s) => s.clone(),
                    None => f.clone(),
                };
                resolved &= !f.is_ref();
                (k.clone(), f)
            })
            .collect();
        let list = self
            .list
            .iter()
            .map(|sub| {
                let (s, ok) = sub.subst(subst);
                resolved &= ok;
                s
            })
            .collect();
        (
            Fileset {
                list,
                map,
                list_present: self.list_present,
            },
            resolved,
        )
    }

    /// Writes the digest material as Reflow does: for a list fileset ([`Fileset::is_list`]) each
    /// element's material and nothing else; otherwise each map entry in key order as the key
    /// bytes followed by the binary form of the file's digest.
    pub fn write_digest(&self, w: &mut impl Write) -> std::io::Result<()> {
        if self.is_list() {
            for sub in &self.list {
                sub.write_digest(w)?;
            }
            return Ok(());
        }
        for (k, f) in &self.map {
            w.write_all(k.as_bytes())?;
            f.digest().write_binary(&mut *w)?;
        }
        Ok(())
    }

    /// The fileset digest (SHA-256 over [`Fileset::write_digest`]).
    pub fn digest(&self) -> Digest {
        let mut h = Hasher::new();
        // Writing into a hasher cannot fail.
        let _ = self.write_digest(&mut h);
        h.finish().0
    }

    /// Checks every key with [`crate::relpath::validate`].
    ///
    /// # Errors
    /// The first unsafe key.
    pub fn validate_paths(&self) -> Result<(), FilesetError> {
        for k in self.map.keys() {
            relpath::validate(k)?;
        }
        for sub in &self.list {
            sub.validate_paths()?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Vectors computed with printf | sha256sum, independently of this code.
    const X: &str = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"; // "x"
    const FOOBAR: &str = "aec070645fe53ee3b3763059376134f058cc337247c978add178b6ccdfb0019f"; // "foobar\n"
    const REF_5_S3_ABC: &str = "760abaf4b70d7c950ec50c99726cb8ca3e9598e7f6b20474e04f5f8edeb4259b";
    const REF_WITH_ASSERTIONS: &str =
        "02c27baec20e5cd5f75569ec538eefdfb0f4d4549f497c7e7114cbe718fc9772";
    const MAP_A_BC: &str = "83b9b2fd6aeb376fc293be5fd3eb27f3054a9c24e648bb87c0e4f6bab00aac87";
    const MAP_DOT_X: &str = "9d14306462208faf22f594b3187fdd242ed80615680ae9ffac3a9f8ac7e21e90";
    const LIST_BOTH: &str = "1d7d9a43338f43c83d3d62eb23483f2ceb0c5409c4cae86910d576c826d599d0";
    const EMPTY: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    fn d(h: &str) -> Digest {
        Digest::parse(h).unwrap()
    }

    fn m1() -> Fileset {
        Fileset::from_map(BTreeMap::from([
            ("a".into(), File::resolved(d(FOOBAR), 7)),
            ("b/c".into(), File::resolved(d(X), 1)),
        ]))
    }

    /// A reference to s3://b/k with blob assertions on its size and ETag.
    fn asserted_ref() -> File {
        let mut a = File::reference("s3://b/k", "", 0);
        a.assertions = Some(BTreeMap::from([(
            AssertionKey {
                namespace: "blob".into(),
                subject: "s3://b/k".into(),
            },
            BTreeMap::from([("size".into(), "0".into()), ("etag".into(), "e1".into())]),
        )]));
        a
    }

    fn m2() -> Fileset {
        Fileset::single(File::resolved(d(X), 1))
    }

    #[test]
    fn file_digests() {
        assert_eq!(File::resolved(d(X), 1).digest(), d(X));
        let r = File::reference("s3://b/k", "abc", 5);
        assert!(r.is_ref());
        assert_eq!(r.digest(), d(REF_5_S3_ABC));
        let mut with_hash = r.clone();
        with_hash.content_hash = d(FOOBAR);
        assert_eq!(with_hash.digest(), d(FOOBAR));
        let a = asserted_ref();
        assert_eq!(a.digest(), d(REF_WITH_ASSERTIONS));
    }

    #[test]
    fn fileset_digests() {
        assert_eq!(m1().digest(), d(MAP_A_BC));
        assert_eq!(m2().digest(), d(MAP_DOT_X));
        assert_eq!(Fileset::from_list(vec![m1(), m2()]).digest(), d(LIST_BOTH));
        assert_eq!(Fileset::default().digest(), d(EMPTY));
    }

    #[test]
    fn list_filesets_digest_their_list_only_as_reflow_does() {
        // A list beside a map: Reflow hashes the list and ignores the map.
        let mut both = Fileset::from_list(vec![m1(), m2()]);
        both.map.insert("ignored".into(), File::resolved(d(X), 1));
        assert_eq!(both.digest(), d(LIST_BOTH));
        // An empty but present list is a list fileset: it hashes nothing, whatever its map.
        let parse = |j: &str| serde_json::from_str::<Fileset>(j).unwrap();
        let empty_list = parse(r#"{"List":[]}"#);
        assert!(empty_list.is_list());
        assert_eq!(empty_list.digest(), d(EMPTY));
        let with_map = parse(
            r#"{"List":[],"Fileset":{".":{"ID":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","Size":1}}}"#,
        );
        assert_eq!(with_map.digest(), d(EMPTY));
        assert!(with_map.flatten().is_empty());
        // A null or absent list is not a list.
        let null_list = parse(
            r#"{"List":null,"Fileset":{".":{"ID":"sha256:2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881","Size":1}}}"#,
        );
        assert!(!null_list.is_list());
        assert_eq!(null_list.digest(), d(MAP_DOT_X));
    }

    #[test]
    fn assertions_travel_in_json_and_keep_reference_digests() {
        let a = asserted_ref();
        let j = serde_json::to_value(&a).unwrap();
        assert_eq!(
            j["Assertions"],
            serde_json::json!([
                {"Key": {"Namespace": "blob", "Subject": "s3://b/k", "Object": "etag"}, "Value": "e1"},
                {"Key": {"Namespace": "blob", "Subject": "s3://b/k", "Object": "size"}, "Value": "0"}
            ])
        );
        let back: File = serde_json::from_value(j).unwrap();
        assert_eq!(back.digest(), d(REF_WITH_ASSERTIONS));
        assert_eq!(back, a);
        let conflict = r#"{"Size":0,"Assertions":[{"Key":{"Object":"etag"},"Value":"a"},{"Key":{"Object":"etag"},"Value":"b"}]}"#;
        assert!(serde_json::from_str::<File>(conflict).is_err());
        let plain: File = serde_json::from_str(r#"{"Size":1,"Assertions":null}"#).unwrap();
        assert!(plain.assertions.is_none());
    }

    #[test]
    fn flatten_pullup_files() {
        let l = Fileset::from_list(vec![m1(), m2()]);
        assert_eq!(l.flatten().len(), 2);
        assert_eq!(m1().flatten(), vec![&m1()]);
        let p = l.pullup();
        assert!(p.list.is_empty());
        assert_eq!(p.map.keys().collect::<Vec<_>>(), vec![".", "a", "b/c"]);
        // later list elements overwrite earlier keys
        let later = Fileset::from_list(vec![m2(), Fileset::single(File::resolved(d(FOOBAR), 7))]);
        assert_eq!(later.pullup().map["."].id, d(FOOBAR));
        // files dedups by digest: X appears twice
        assert_eq!(l.n(), 3);
        assert_eq!(l.files().len(), 2);
        assert_eq!(l.size(), 9);
        assert!(!l.is_empty());
        assert!(Fileset::from_list(vec![Fileset::default()]).is_empty());
    }

    #[test]
    fn single_file() {
        assert_eq!(m2().file().unwrap().id, d(X));
        let e = m1().file().unwrap_err();
        assert_eq!(e, FilesetError::NotSingleFile { n: 2 });
        assert_eq!(e.kind(), Kind::Precondition);
    }

    #[test]
    fn subst_resolves_references() {
        let r = File::reference("s3://b/k", "abc", 5);
        let fs = Fileset::from_list(vec![
            Fileset::single(r.clone()),
            Fileset::from_map(BTreeMap::from([(
                "z".into(),
                File::reference("s3://b/other", "", 1),
            )])),
        ]);
        assert!(fs.has_refs());
        let (_, ok) = fs.subst(&HashMap::new());
        assert!(!ok);
        let mut m = HashMap::new();
        m.insert(r.digest(), File::resolved(d(FOOBAR), 7));
        let (out, ok) = fs.subst(&m);
        assert!(!ok, "the second reference is still unresolved");
        assert_eq!(out.list[0].map["."].id, d(FOOBAR));
        m.insert(
            File::reference("s3://b/other", "", 1).digest(),
            File::resolved(d(X), 1),
        );
        let (out, ok) = fs.subst(&m);
        assert!(ok);
        assert!(!out.has_refs());
    }

    #[test]
    fn json_compat() {
        let j = serde_json::to_value(m2()).unwrap();
        assert_eq!(j["Fileset"]["."]["ID"], format!("sha256:{X}"));
        assert_eq!(j["Fileset"]["."]["Size"], 1);
        assert_eq!(j["Fileset"]["."]["LastModified"], "0001-01-01T00:00:00Z");
        assert_eq!(j["Fileset"]["."]["ContentHash"], "<zero>");
        assert!(j.get("List").is_none());
        assert!(j["Fileset"]["."].get("Source").is_none());
        // A Go-written fileset with nulls and a reference.
        let go = r#"{"List":null,"Fileset":{"in":{"ID":"<zero>","Size":5,"Source":"s3://b/k","ETag":"abc",
            "LastModified":"2023-10-01T12:34:56.12Z","ContentHash":"<zero>"}}}"#;
        let fs: Fileset = serde_json::from_str(go).unwrap();
        assert_eq!(fs.map["in"].digest(), d(REF_5_S3_ABC));
        let back: Fileset = serde_json::from_value(serde_json::to_value(&fs).unwrap()).unwrap();
        assert_eq!(back, fs);
        assert!(serde_json::from_str::<Fileset>(r#"{"Fileset":{"a":{"Size":-1}}}"#).is_err());
    }

    #[test]
    fn rejects_unsafe_keys() {
        let mut fs = m1();
        fs.map
            .insert("../etc/passwd".into(), File::resolved(d(X), 1));
        let nested = Fileset::from_list(vec![m2(), fs]);
        let e = nested.validate_paths().unwrap_err();
        assert!(matches!(
            e,
            FilesetError::Path(PathError::ParentComponent { .. })
        ));
        assert_eq!(e.kind(), Kind::Invalid);
        assert!(m1().validate_paths().is_ok());
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_crash() {
        let deep = format!("{}{}", r#"{"List":["#.repeat(10_000), "]}".repeat(10_000));
        assert!(serde_json::from_str::<Fileset>(&deep).is_err());
    }
}
