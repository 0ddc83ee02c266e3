//! A small filesystem of its own (tmpfs), for tests of a full disk that no other test shares.
//! Mounting needs root; the tests run as root, as CI does.

use std::path::Path;
use std::process::Command;

/// A tmpfs of a given size, unmounted on drop.
pub struct SmallDisk {
    dir: tempfile::TempDir,
}

impl SmallDisk {
    /// Mounts a tmpfs of `size` (as `mount -o size=` takes it: "4m").
    pub fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .expect("mount runs");
        assert!(
            status.success(),
            "mounting a tmpfs needs root (CI runs tests as root)"
        );
        Self { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the disk with a file named `name` (another process's data, say); remove it to
    /// give the room back.
    pub fn fill(&self, name: &str) -> std::path::PathBuf {
        use std::io::Write;
        let hog = self.path().join(name);
        let mut f = std::fs::File::create(&hog).expect("the hog is created");
        let chunk = vec![0u8; 16 * 1024];
        while f.write_all(&chunk).is_ok() {}
        let _ = f.sync_all();
        hog
    }
}

impl SmallDisk {
    /// Fills the disk but for about `room` bytes.
    pub fn fill_leaving(&self, name: &str, room: u64) -> std::path::PathBuf {
        let hog = self.fill(name);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&hog)
            .expect("the hog opens");
        let len = f.metadata().expect("the hog's size").len();
        f.set_len(len.saturating_sub(room))
            .expect("the hog shrinks");
        hog
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.dir.path()).status();
    }
}
