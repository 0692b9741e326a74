//! The replay cache that the `-i` processes of one user share, so that a
//! captured message 1 replayed on a new connection (a new process under
//! inetd or systemd `Accept=yes`) gets no answer either.
//!
//! # Design
//!
//! One file per user id, `replay-UID`, in the first usable directory of
//! `$RUNTIME_DIRECTORY` (its first entry; systemd's `RuntimeDirectory=`),
//! `/run/taptun` and `$XDG_RUNTIME_DIR/taptun` (these two are created with
//! mode 700 when missing). A directory is usable when it is a real directory
//! (not a symlink), owned by our effective uid and writable by no one else;
//! the file is opened without following a symlink and used only when it is a
//! regular file owned by us and writable by no one else.
//!
//! ```text
//! offset  size
//!  0       8    magic "taptunRC"
//!  8       4    version, 1 (little-endian, like every number here)
//! 12       4    record count N (at most REPLAY_FILE_CAPACITY)
//! 16       8    checksum: the first 8 bytes of BLAKE2s-256 over bytes 0..16
//!               and the records
//! 24    40*N    records: ephemeral key (32), seen at (u64 ns, CLOCK_BOOTTIME)
//! ```
//!
//! Each check takes an exclusive flock on the file (waiting at most 1 s),
//! reads it, drops the records older than 10 minutes, looks the key up,
//! appends it, drops the first records beyond [`REPLAY_FILE_CAPACITY`] (4096:
//! 160 KiB), and writes the file back in place. Times come from
//! CLOCK_BOOTTIME because an `Instant` means nothing to another process. A
//! write cut short by a crash leaves a file whose checksum fails: the next
//! check starts from an empty cache and rewrites it (the file is in a tmpfs
//! that a reboot empties anyway).
//!
//! When no directory is usable, the process keeps its own cache and says so
//! once; when the file fails later (I/O error, lock held for over 1 s), that
//! check falls back to the process's own cache with a warning. Either way
//! the handshake goes on: the psk still guards everything past message 2.

use std::fs::{DirBuilder, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use blake2::{Blake2s256, Digest};

use crate::handshake::{REPLAY_WINDOW, ReplayCache, Replays};
use crate::keys::KEY_LEN;

/// The most records the shared file holds; beyond, the first are dropped.
pub const REPLAY_FILE_CAPACITY: usize = 4096;
/// How long a check waits for another process's lock before it falls back.
const LOCK_WAIT: Duration = Duration::from_secs(1);

const MAGIC: &[u8; 8] = b"taptunRC";
const VERSION: u32 = 1;
const HEADER_LEN: usize = 24;
const RECORD_LEN: usize = KEY_LEN + 8;

/// A record: an ephemeral key and when it was seen (since boot).
type Record = ([u8; KEY_LEN], u64);

/// The -i replay check: the shared file when one is usable, else (and on
/// any failure of the file) this process's own cache.
pub struct InetdReplays {
    shared: Option<SharedCache>,
    local: ReplayCache,
}

impl InetdReplays {
    /// Opens the shared cache in the first usable directory that the
    /// environment names (see the module doc); logs once if there is none.
    pub fn open(env: &dyn Fn(&str) -> Option<String>) -> InetdReplays {
        InetdReplays::open_first(&candidates(env))
    }

    /// As `open`, over the given (directory, create it if missing) pairs.
    pub fn open_first(dirs: &[(PathBuf, bool)]) -> InetdReplays {
        let mut why = Vec::new();
        let mut shared = None;
        for (dir, create) in dirs {
            match SharedCache::open_in(dir, *create) {
                Ok(cache) => {
                    log::debug!("replay cache: {}", cache.path.display());
                    shared = Some(cache);
                    break;
                }
                Err(e) => why.push(format!("{}: {e}", dir.display())),
            }
        }
        if shared.is_none() {
            log::warn!(
                "no usable directory for the shared replay cache ({}); this connection's check \
                 cannot see the others' (create /run/taptun owned by taptun's user, or set \
                 RuntimeDirectory=taptun)",
                why.join("; ")
            );
        }
        InetdReplays {
            shared,
            local: ReplayCache::default(),
        }
    }
}

impl Replays for InetdReplays {
    fn first_sight(&self, key: [u8; KEY_LEN]) -> bool {
        let Some(shared) = &self.shared else {
            return self.local.first_sight(key);
        };
        match shared.insert(key, crate::sys::boottime()) {
            Ok(fresh) => fresh,
            Err(e) => {
                log::warn!(
                    "{}: {e}; checking this connection against its own replay cache only",
                    shared.path.display()
                );
                self.local.first_sight(key)
            }
        }
    }
}

/// The candidate directories, in order, each with whether to create it.
fn candidates(env: &dyn Fn(&str) -> Option<String>) -> Vec<(PathBuf, bool)> {
    let mut dirs = Vec::new();
    if let Some(runtime) = env("RUNTIME_DIRECTORY") {
        if let Some(first) = runtime.split(':').find(|d| !d.is_empty()) {
            dirs.push((PathBuf::from(first), false));
        }
    }
    dirs.push((PathBuf::from("/run/taptun"), true));
    if let Some(xdg) = env("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        dirs.push((Path::new(&xdg).join("taptun"), true));
    }
    dirs
}

/// The replay file of our uid in one directory, open for reading and writing.
pub struct SharedCache {
    file: File,
    path: PathBuf,
}

/// Holds the file's flock until dropped.
struct Locked<'a>(&'a File);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        crate::sys::unlock(self.0.as_raw_fd());
    }
}

impl SharedCache {
    /// Opens (creating it if needed) the replay file of our uid in `dir`.
    ///
    /// # Errors
    /// A directory that is missing (and not to be created), a symlink, not
    /// ours, or writable by others; a file that is not a regular file of
    /// ours writable only by us; and the system's errors.
    pub fn open_in(dir: &Path, create: bool) -> io::Result<SharedCache> {
        let uid = crate::sys::effective_uid();
        if create {
            match DirBuilder::new().mode(0o700).create(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
        }
        let meta = std::fs::symlink_metadata(dir)?;
        if !meta.file_type().is_dir() {
            return Err(io::Error::other("not a directory (or a symlink)"));
        }
        check_owner(&meta, uid)?;
        let path = dir.join(format!("replay-{uid}"));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let meta = file.metadata()?;
        if !meta.file_type().is_file() {
            return Err(io::Error::other(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        check_owner(&meta, uid)
            .map_err(|e| io::Error::other(format!("{}: {e}", path.display())))?;
        Ok(SharedCache { file, path })
    }

    /// Records `key` seen at `now` (since boot); false when it was seen
    /// within the window.
    ///
    /// # Errors
    /// The file's I/O errors, or its lock held elsewhere for over 1 s.
    pub fn insert(&self, key: [u8; KEY_LEN], now: Duration) -> io::Result<bool> {
        let _locked = self.lock()?;
        let mut records = self.read()?;
        let now = u64::try_from(now.as_nanos()).unwrap_or(u64::MAX);
        let window = u64::try_from(REPLAY_WINDOW.as_nanos()).unwrap_or(u64::MAX);
        // A time ahead of now is from before a reboot: not to be trusted.
        records.retain(|&(_, seen)| seen <= now && now - seen < window);
        if records.iter().any(|(k, _)| *k == key) {
            return Ok(false);
        }
        records.push((key, now));
        let excess = records.len().saturating_sub(REPLAY_FILE_CAPACITY);
        records.drain(..excess);
        self.write(&records)?;
        Ok(true)
    }

    fn lock(&self) -> io::Result<Locked<'_>> {
        let give_up = Instant::now() + LOCK_WAIT;
        while !crate::sys::try_lock_exclusive(self.file.as_raw_fd())? {
            if Instant::now() > give_up {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "another process has held its lock for over 1 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(Locked(&self.file))
    }

    /// The records of a well-formed file; none of a new, torn or foreign one.
    fn read(&self) -> io::Result<Vec<Record>> {
        let mut bytes = Vec::new();
        let limit = (HEADER_LEN + REPLAY_FILE_CAPACITY * RECORD_LEN) as u64;
        (&self.file).seek(SeekFrom::Start(0))?;
        (&self.file).take(limit).read_to_end(&mut bytes)?;
        let records = parse(&bytes);
        if records.is_none() && !bytes.is_empty() {
            log::warn!(
                "{}: damaged (a write cut short?); starting it again empty",
                self.path.display()
            );
        }
        Ok(records.unwrap_or_default())
    }

    fn write(&self, records: &[Record]) -> io::Result<()> {
        let bytes = encode(records);
        self.file.write_all_at(&bytes, 0)?;
        self.file.set_len(bytes.len() as u64)
    }
}

/// Owned by `uid` and writable by neither group nor others.
fn check_owner(meta: &std::fs::Metadata, uid: libc::uid_t) -> io::Result<()> {
    if meta.uid() != uid {
        return Err(io::Error::other(format!(
            "owned by uid {}, not by us ({uid})",
            meta.uid()
        )));
    }
    if meta.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "writable by group or others (mode {:o})",
            meta.mode() & 0o7777
        )));
    }
    Ok(())
}

fn checksum(header: &[u8], records: &[u8]) -> [u8; 8] {
    let digest = Blake2s256::new()
        .chain_update(header)
        .chain_update(records)
        .finalize();
    let mut sum = [0u8; 8];
    sum.copy_from_slice(&digest[..8]);
    sum
}

fn encode(records: &[Record]) -> Vec<u8> {
    let mut head = Vec::with_capacity(16);
    head.extend_from_slice(MAGIC);
    head.extend_from_slice(&VERSION.to_le_bytes());
    head.extend_from_slice(&(records.len() as u32).to_le_bytes());
    let mut body = Vec::with_capacity(records.len() * RECORD_LEN);
    for (key, seen) in records {
        body.extend_from_slice(key);
        body.extend_from_slice(&seen.to_le_bytes());
    }
    let mut out = head.clone();
    out.extend_from_slice(&checksum(&head, &body));
    out.extend_from_slice(&body);
    out
}

/// The records of `bytes`, or None unless it is a whole file of version 1
/// with a matching checksum. Bytes past the last record are ignored.
fn parse(bytes: &[u8]) -> Option<Vec<Record>> {
    let head = bytes.get(..16)?;
    let sum = bytes.get(16..HEADER_LEN)?;
    if head.get(..8)? != MAGIC {
        return None;
    }
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(head.get(at..at + 4)?.try_into().ok()?))
    };
    if word(8)? != VERSION {
        return None;
    }
    let count = usize::try_from(word(12)?).ok()?;
    if count > REPLAY_FILE_CAPACITY {
        return None;
    }
    let body = bytes.get(HEADER_LEN..HEADER_LEN + count * RECORD_LEN)?;
    if checksum(head, body) != sum {
        return None;
    }
    body.chunks_exact(RECORD_LEN)
        .map(|record| {
            let key: [u8; KEY_LEN] = record.get(..KEY_LEN)?.try_into().ok()?;
            let seen = u64::from_le_bytes(record.get(KEY_LEN..)?.try_into().ok()?);
            Some((key, seen))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A private directory for one test, removed afterwards.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> TempDir {
            let path =
                std::env::temp_dir().join(format!("taptun-replay-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            DirBuilder::new().mode(0o700).create(&path).unwrap();
            TempDir(path)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const MINUTE: Duration = Duration::from_secs(60);

    fn at(minutes: u64) -> Duration {
        // Well after boot, like any real CLOCK_BOOTTIME.
        Duration::from_secs(3600) + MINUTE * minutes as u32
    }

    #[test]
    fn a_key_is_fresh_once_within_the_window() {
        let dir = TempDir::new("window");
        let cache = SharedCache::open_in(&dir.0, false).unwrap();
        assert!(cache.insert([1; 32], at(0)).unwrap());
        assert!(cache.insert([2; 32], at(0)).unwrap());
        assert!(!cache.insert([1; 32], at(9)).unwrap(), "a replay");
        assert!(
            cache.insert([1; 32], at(10)).unwrap(),
            "forgotten after 10 min"
        );
    }

    #[test]
    fn a_time_before_a_reboot_is_not_trusted() {
        let dir = TempDir::new("reboot");
        let cache = SharedCache::open_in(&dir.0, false).unwrap();
        assert!(cache.insert([1; 32], at(30)).unwrap());
        assert!(cache.insert([1; 32], at(1)).unwrap());
    }

    #[test]
    fn the_file_is_bounded_and_drops_the_first_records() {
        let dir = TempDir::new("capacity");
        let cache = SharedCache::open_in(&dir.0, false).unwrap();
        for i in 0..=REPLAY_FILE_CAPACITY as u32 {
            let mut key = [0u8; 32];
            key[..4].copy_from_slice(&i.to_le_bytes());
            assert!(cache.insert(key, at(0)).unwrap());
        }
        let len = std::fs::metadata(&cache.path).unwrap().len() as usize;
        assert_eq!(len, HEADER_LEN + REPLAY_FILE_CAPACITY * RECORD_LEN);
        // Key 0 went first; key 1 is still there.
        assert!(cache.insert([0; 32], at(0)).unwrap());
        let mut one = [0u8; 32];
        one[0] = 2;
        assert!(!cache.insert(one, at(0)).unwrap());
    }

    #[test]
    fn two_processes_see_each_others_keys() {
        let dir = TempDir::new("two");
        let first = SharedCache::open_in(&dir.0, false).unwrap();
        let second = SharedCache::open_in(&dir.0, false).unwrap();
        assert!(first.insert([7; 32], at(0)).unwrap());
        assert!(!second.insert([7; 32], at(1)).unwrap());
        assert!(second.insert([8; 32], at(1)).unwrap());
        assert!(!first.insert([8; 32], at(2)).unwrap());
    }

    #[test]
    fn a_torn_or_truncated_file_is_rebuilt_empty() {
        let dir = TempDir::new("torn");
        let cache = SharedCache::open_in(&dir.0, false).unwrap();
        for i in 0..10u8 {
            assert!(cache.insert([i; 32], at(0)).unwrap());
        }
        // A write cut short: the count says 10, the records stop early.
        let whole = std::fs::read(&cache.path).unwrap();
        std::fs::write(&cache.path, &whole[..HEADER_LEN + 3 * RECORD_LEN + 7]).unwrap();
        assert!(cache.insert([1; 32], at(1)).unwrap(), "rebuilt empty");
        assert!(!cache.insert([1; 32], at(1)).unwrap(), "and used again");
        // One flipped bit in a record.
        let mut bytes = std::fs::read(&cache.path).unwrap();
        bytes[HEADER_LEN + 5] ^= 1;
        std::fs::write(&cache.path, &bytes).unwrap();
        assert!(cache.insert([1; 32], at(1)).unwrap());
        // Garbage, and a header alone.
        std::fs::write(&cache.path, b"not a replay cache at all, not even close").unwrap();
        assert!(cache.insert([1; 32], at(1)).unwrap());
        std::fs::write(&cache.path, &whole[..10]).unwrap();
        assert!(cache.insert([1; 32], at(1)).unwrap());
    }

    #[test]
    fn a_file_writable_by_others_or_a_symlink_is_not_used() {
        let dir = TempDir::new("file");
        let path = dir
            .0
            .join(format!("replay-{}", crate::sys::effective_uid()));
        std::fs::write(&path, b"").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).unwrap();
        assert!(SharedCache::open_in(&dir.0, false).is_err());
        std::fs::remove_file(&path).unwrap();
        let target = dir.0.join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, &path).unwrap();
        assert!(SharedCache::open_in(&dir.0, false).is_err());
    }

    #[test]
    fn unusable_directories_leave_a_cache_of_the_process_own() {
        let dir = TempDir::new("dirs");
        let file = dir.0.join("a-file");
        std::fs::write(&file, b"").unwrap();
        let open = dir.0.join("group-writable");
        DirBuilder::new().mode(0o700).create(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        let link = dir.0.join("link");
        let real = dir.0.join("real");
        DirBuilder::new().mode(0o700).create(&real).unwrap();
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let candidates = [
            (dir.0.join("missing"), false),
            (file.join("taptun"), true),
            (open, false),
            (link, false),
        ];
        let replays = InetdReplays::open_first(&candidates);
        assert!(replays.shared.is_none());
        // Still refuses a replay within the process.
        assert!(replays.first_sight([3; 32]));
        assert!(!replays.first_sight([3; 32]));
        // The next usable one is taken, and created mode 700.
        let made = dir.0.join("made");
        let replays =
            InetdReplays::open_first(&[(dir.0.join("missing"), false), (made.clone(), true)]);
        assert!(replays.shared.is_some());
        let mode = std::fs::metadata(&made).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
    }

    #[test]
    fn the_environment_orders_the_candidates() {
        let env = |var: &str| match var {
            "RUNTIME_DIRECTORY" => Some("/run/a:/run/b".to_owned()),
            "XDG_RUNTIME_DIR" => Some("/run/user/1000".to_owned()),
            _ => None,
        };
        assert_eq!(
            candidates(&env),
            [
                (PathBuf::from("/run/a"), false),
                (PathBuf::from("/run/taptun"), true),
                (PathBuf::from("/run/user/1000/taptun"), true),
            ]
        );
        assert_eq!(
            candidates(&|_| None),
            [(PathBuf::from("/run/taptun"), true)]
        );
    }
}
