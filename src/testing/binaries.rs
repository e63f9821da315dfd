//! Finding the PostgreSQL server binaries (and Patroni's and MariaDB's programs).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// The programs a cluster needs; a directory qualifies only if it holds all of them.
const REQUIRED: [&str; 3] = ["initdb", "postgres", "pg_basebackup"];

/// Environment variable naming the directory of the PostgreSQL server binaries.
pub const BINDIR_ENV: &str = "RWSPLIT_PG_BINDIR";

/// Where to look, made explicit so that tests can point it at fake trees.
#[derive(Debug, Clone)]
pub(super) struct Search {
    pub(super) explicit: Option<PathBuf>,
    pub(super) env_bindir: Option<OsString>,
    pub(super) pg_config: PathBuf,
    pub(super) path: Option<OsString>,
    pub(super) versioned_root: PathBuf,
}

impl Search {
    /// The real search: the process environment and the Debian layout.
    pub(super) fn from_env(explicit: Option<PathBuf>) -> Self {
        Search {
            explicit,
            env_bindir: std::env::var_os(BINDIR_ENV),
            pg_config: PathBuf::from("pg_config"),
            path: std::env::var_os("PATH"),
            versioned_root: PathBuf::from("/usr/lib/postgresql"),
        }
    }

    /// The first directory holding every required binary.
    ///
    /// An explicit directory or `RWSPLIT_PG_BINDIR` that lacks them is an error at
    /// once rather than a silent fall-through: the caller asked for that one.
    pub(super) fn find(&self) -> Result<PathBuf> {
        let mut searched = Vec::new();
        if let Some(dir) = &self.explicit {
            return self.demand(dir, format!("explicit bindir {}", dir.display()));
        }
        match &self.env_bindir {
            Some(dir) if !dir.is_empty() => {
                let dir = PathBuf::from(dir);
                return self.demand(&dir, format!("{BINDIR_ENV}={}", dir.display()));
            }
            _ => searched.push(format!("{BINDIR_ENV} (not set)")),
        }

        match Command::new(&self.pg_config).arg("--bindir").output() {
            Ok(out) if out.status.success() => {
                let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
                if missing(&dir).is_none() {
                    return Ok(dir);
                }
                searched.push(format!(
                    "`pg_config --bindir` = {} ({})",
                    dir.display(),
                    describe(&dir)
                ));
            }
            Ok(out) => searched.push(format!("`pg_config --bindir` (exited with {})", out.status)),
            Err(_) => searched.push(format!(
                "`pg_config --bindir` ({} not found)",
                self.pg_config.display()
            )),
        }

        if let Some(path) = &self.path {
            for dir in std::env::split_paths(path) {
                if missing(&dir).is_none() {
                    return Ok(dir);
                }
            }
        }
        searched.push("every directory on PATH".to_owned());

        let mut versioned = versioned_bindirs(&self.versioned_root);
        versioned.sort_by(|a, b| b.0.cmp(&a.0));
        for (_, dir) in &versioned {
            if missing(dir).is_none() {
                return Ok(dir.clone());
            }
            searched.push(format!("{} ({})", dir.display(), describe(dir)));
        }
        if versioned.is_empty() {
            searched.push(format!("{}/*/bin (none)", self.versioned_root.display()));
        }
        Err(Error::PgBinariesNotFound { searched })
    }

    fn demand(&self, dir: &Path, label: String) -> Result<PathBuf> {
        match missing(dir) {
            None => Ok(dir.to_path_buf()),
            Some(_) => Err(Error::PgBinariesNotFound {
                searched: vec![format!("{label} ({})", describe(dir))],
            }),
        }
    }
}

/// The first required binary absent from `dir`.
fn missing(dir: &Path) -> Option<&'static str> {
    REQUIRED.into_iter().find(|name| !dir.join(name).is_file())
}

fn describe(dir: &Path) -> String {
    if !dir.is_dir() {
        return "no such directory".to_owned();
    }
    match missing(dir) {
        Some(name) => format!("no {name}"),
        None => "ok".to_owned(),
    }
}

/// `<root>/<version>/bin` for every numeric version directory, with its version.
fn versioned_bindirs(root: &Path) -> Vec<(Vec<u32>, PathBuf)> {
    let Ok(entries) = std::fs::read_dir(root) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| {
            let entry = entry.ok()?;
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(|part| part.parse::<u32>().ok())
                .collect::<Option<Vec<u32>>>()?;
            Some((version, entry.path().join("bin")))
        })
        .collect()
}

/// Environment variable naming where `patroni` and `patronictl` are: their
/// directory (a virtualenv's `bin`), or the `patroni` program itself.
pub const PATRONI_BIN_ENV: &str = "RWSPLIT_PATRONI_BIN";

/// Where `.ci/run` installs Patroni: a virtualenv readable by the `postgres` user.
pub const DEFAULT_PATRONI_VENV: &str = "/opt/rwsplit/patroni-venv";

/// The programs a Patroni cluster runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PatroniPrograms {
    pub(super) patroni: PathBuf,
    pub(super) patronictl: PathBuf,
    pub(super) etcd: PathBuf,
}

/// Where to look for Patroni and etcd, made explicit for tests.
#[derive(Debug, Clone)]
pub(super) struct PatroniSearch {
    pub(super) env_bin: Option<OsString>,
    pub(super) default_bin: PathBuf,
    pub(super) path: Option<OsString>,
    pub(super) etcd_fallback: PathBuf,
}

impl PatroniSearch {
    /// The real search: `RWSPLIT_PATRONI_BIN` or the default virtualenv, and etcd
    /// on `PATH` or in `/usr/bin`.
    pub(super) fn from_env() -> Self {
        PatroniSearch {
            env_bin: std::env::var_os(PATRONI_BIN_ENV).filter(|v| !v.is_empty()),
            default_bin: Path::new(DEFAULT_PATRONI_VENV).join("bin"),
            path: std::env::var_os("PATH"),
            etcd_fallback: PathBuf::from("/usr/bin/etcd"),
        }
    }

    /// All three programs, or an error naming what is missing and where it was looked for.
    pub(super) fn find(&self) -> Result<PatroniPrograms> {
        let mut missing = Vec::new();
        let (bin_dir, label) = match &self.env_bin {
            Some(value) => {
                let value = PathBuf::from(value);
                // Either the directory or the `patroni` program in it.
                let dir = if value.is_file() {
                    value.parent().map(Path::to_path_buf).unwrap_or_default()
                } else {
                    value.clone()
                };
                (dir, format!("{PATRONI_BIN_ENV}={}", value.display()))
            }
            None => (
                self.default_bin.clone(),
                format!("{} ({PATRONI_BIN_ENV} not set)", self.default_bin.display()),
            ),
        };
        let patroni = bin_dir.join("patroni");
        let patronictl = bin_dir.join("patronictl");
        for program in [&patroni, &patronictl] {
            if !is_executable(program) {
                missing.push(format!("{}: no executable {}", label, program.display()));
            }
        }
        let on_path = self
            .path
            .iter()
            .flat_map(std::env::split_paths)
            .map(|dir| dir.join("etcd"))
            .find(|candidate| is_executable(candidate));
        let etcd = match on_path {
            Some(found) => Some(found),
            None if is_executable(&self.etcd_fallback) => Some(self.etcd_fallback.clone()),
            None => {
                missing.push(format!(
                    "etcd: not on PATH nor at {}",
                    self.etcd_fallback.display()
                ));
                None
            }
        };
        match etcd {
            Some(etcd) if missing.is_empty() => Ok(PatroniPrograms {
                patroni,
                patronictl,
                etcd,
            }),
            _ => Err(Error::PatroniNotFound { missing }),
        }
    }
}

/// Environment variable naming a directory searched first for MariaDB's
/// `mariadbd` and `mariadb-install-db` (see [`MariaCluster`](super::MariaCluster)).
pub const MARIADB_BINDIR_ENV: &str = "RWSPLIT_MARIADB_BINDIR";

/// The programs a MariaDB cluster runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct MariaPrograms {
    pub(super) mariadbd: PathBuf,
    pub(super) install_db: PathBuf,
}

/// Where to look for MariaDB's programs, made explicit for tests.
#[derive(Debug, Clone)]
pub(super) struct MariaSearch {
    pub(super) explicit: Option<PathBuf>,
    pub(super) env_bindir: Option<OsString>,
    pub(super) path: Option<OsString>,
    /// Debian's places: `mariadbd` in `/usr/sbin`, `mariadb-install-db` in `/usr/bin`.
    pub(super) fallbacks: Vec<PathBuf>,
}

impl MariaSearch {
    /// The real search: an explicit directory, `RWSPLIT_MARIADB_BINDIR`, `PATH`,
    /// `/usr/sbin`, `/usr/bin`.
    pub(super) fn from_env(explicit: Option<PathBuf>) -> Self {
        MariaSearch {
            explicit,
            env_bindir: std::env::var_os(MARIADB_BINDIR_ENV).filter(|v| !v.is_empty()),
            path: std::env::var_os("PATH"),
            fallbacks: vec![PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")],
        }
    }

    /// Each program from the first place that has it (the two may live in different
    /// directories, as on Debian), or an error naming what is missing and where it
    /// was looked for.
    pub(super) fn find(&self) -> Result<MariaPrograms> {
        let mut places: Vec<(PathBuf, String)> = Vec::new();
        if let Some(dir) = &self.explicit {
            places.push((dir.clone(), format!("explicit bindir {}", dir.display())));
        }
        if let Some(dir) = &self.env_bindir {
            let dir = PathBuf::from(dir);
            let label = format!("{MARIADB_BINDIR_ENV}={}", dir.display());
            places.push((dir, label));
        }
        for dir in self.path.iter().flat_map(std::env::split_paths) {
            places.push((dir, "PATH".to_owned()));
        }
        for dir in &self.fallbacks {
            places.push((dir.clone(), dir.display().to_string()));
        }
        let mut missing = Vec::new();
        let mut find = |program: &str| {
            let found = places
                .iter()
                .map(|(dir, _)| dir.join(program))
                .find(|candidate| is_executable(candidate));
            if found.is_none() {
                let mut labels: Vec<&str> = Vec::new();
                for (_, label) in &places {
                    if !labels.contains(&label.as_str()) {
                        labels.push(label);
                    }
                }
                missing.push(format!("{program}: not in {}", labels.join(", ")));
            }
            found
        };
        let mariadbd = find("mariadbd");
        let install_db = find("mariadb-install-db");
        match (mariadbd, install_db) {
            (Some(mariadbd), Some(install_db)) => Ok(MariaPrograms {
                mariadbd,
                install_db,
            }),
            _ => Err(Error::MariaDbNotFound { missing }),
        }
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct FakeTree(PathBuf);

    impl FakeTree {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("rws-bin-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&dir);
            std::fs::create_dir_all(&dir).unwrap();
            FakeTree(dir)
        }

        fn bindir(&self, rel: &str, programs: &[&str]) -> PathBuf {
            let dir = self.0.join(rel);
            std::fs::create_dir_all(&dir).unwrap();
            for program in programs {
                std::fs::write(dir.join(program), b"").unwrap();
            }
            dir
        }

        fn search(&self) -> Search {
            Search {
                explicit: None,
                env_bindir: None,
                pg_config: self.0.join("no-pg-config"),
                path: Some(OsString::new()),
                versioned_root: self.0.join("usr-lib-postgresql"),
            }
        }
    }

    impl Drop for FakeTree {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    #[test]
    fn newest_complete_versioned_dir_wins() {
        let tree = FakeTree::new("versioned");
        tree.bindir("usr-lib-postgresql/9.6/bin", &REQUIRED);
        let v15 = tree.bindir("usr-lib-postgresql/15/bin", &REQUIRED);
        tree.bindir("usr-lib-postgresql/16/bin", &["initdb", "postgres"]);
        tree.bindir("usr-lib-postgresql/notaversion/bin", &REQUIRED);
        assert_eq!(tree.search().find().unwrap(), v15);
    }

    #[test]
    fn path_comes_before_versioned_dirs() {
        let tree = FakeTree::new("path");
        tree.bindir("usr-lib-postgresql/15/bin", &REQUIRED);
        let on_path = tree.bindir("somewhere/bin", &REQUIRED);
        let mut search = tree.search();
        search.path = Some(std::env::join_paths([tree.0.join("empty"), on_path.clone()]).unwrap());
        assert_eq!(search.find().unwrap(), on_path);
    }

    #[test]
    fn explicit_and_env_dirs_are_demanded_not_skipped() {
        let tree = FakeTree::new("explicit");
        tree.bindir("usr-lib-postgresql/15/bin", &REQUIRED);
        let partial = tree.bindir("partial", &["initdb"]);

        let mut search = tree.search();
        search.explicit = Some(partial.clone());
        let err = search.find().unwrap_err().to_string();
        assert!(
            err.contains("explicit bindir") && err.contains("no postgres"),
            "{err}"
        );

        let mut search = tree.search();
        search.env_bindir = Some(partial.into_os_string());
        let err = search.find().unwrap_err().to_string();
        assert!(
            err.contains(BINDIR_ENV) && err.contains("no postgres"),
            "{err}"
        );
    }

    #[test]
    fn nothing_found_names_every_place_and_how_to_install() {
        let tree = FakeTree::new("none");
        let err = tree.search().find().unwrap_err();
        let Error::PgBinariesNotFound { searched } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(searched.len(), 4, "{searched:?}");
        let text = err.to_string();
        for expected in [
            BINDIR_ENV,
            "pg_config",
            "PATH",
            "usr-lib-postgresql/*/bin",
            "apt-get install postgresql",
            "brew install",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
    }

    fn executable(path: &Path) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn patroni_search_names_what_is_missing_and_how_to_install_it() {
        let tree = FakeTree::new("patroni");
        let search = PatroniSearch {
            env_bin: None,
            default_bin: tree.0.join("venv/bin"),
            path: Some(OsString::new()),
            etcd_fallback: tree.0.join("usr-bin/etcd"),
        };
        let err = search.find().unwrap_err();
        let Error::PatroniNotFound { missing } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(missing.len(), 3, "{missing:?}");
        let text = err.to_string();
        for expected in [
            "patronictl",
            "etcd",
            PATRONI_BIN_ENV,
            "apt-get install etcd-server",
            "patroni[etcd3]",
            DEFAULT_PATRONI_VENV,
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }

        executable(&tree.0.join("venv/bin/patroni"));
        executable(&tree.0.join("venv/bin/patronictl"));
        executable(&tree.0.join("usr-bin/etcd"));
        let found = search.find().unwrap();
        assert_eq!(found.patroni, tree.0.join("venv/bin/patroni"));
        assert_eq!(found.etcd, tree.0.join("usr-bin/etcd"));

        // The variable may name the program as well as its directory.
        executable(&tree.0.join("other/patroni"));
        executable(&tree.0.join("other/patronictl"));
        let search = PatroniSearch {
            env_bin: Some(tree.0.join("other/patroni").into_os_string()),
            ..search
        };
        assert_eq!(
            search.find().unwrap().patronictl,
            tree.0.join("other/patronictl")
        );
    }
    #[test]
    fn mariadb_search_names_what_is_missing_and_how_to_install_it() {
        let tree = FakeTree::new("mariadb");
        let search = MariaSearch {
            explicit: None,
            env_bindir: Some(tree.0.join("env").into_os_string()),
            path: Some(OsString::new()),
            fallbacks: vec![tree.0.join("sbin"), tree.0.join("bin")],
        };
        let err = search.find().unwrap_err();
        let Error::MariaDbNotFound { missing } = &err else {
            panic!("unexpected error {err:?}");
        };
        assert_eq!(missing.len(), 2, "{missing:?}");
        let text = err.to_string();
        for expected in [
            "mariadbd",
            "mariadb-install-db",
            MARIADB_BINDIR_ENV,
            "apt-get install mariadb-server",
        ] {
            assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
        }
        // Debian's split: the server in sbin, the installer in bin.
        executable(&tree.0.join("sbin/mariadbd"));
        executable(&tree.0.join("bin/mariadb-install-db"));
        let found = search.find().unwrap();
        assert_eq!(found.mariadbd, tree.0.join("sbin/mariadbd"));
        assert_eq!(found.install_db, tree.0.join("bin/mariadb-install-db"));
        // The variable's directory comes first.
        executable(&tree.0.join("env/mariadbd"));
        assert_eq!(search.find().unwrap().mariadbd, tree.0.join("env/mariadbd"));
    }
}
