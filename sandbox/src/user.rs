//! Resolving `USER` against the image's /etc/passwd and /etc/group the way `docker build` does: BuildKit
//! takes `""` and numeric `uid:gid` as they are, and hands everything else to runc's `GetExecUser`.

use super::protocol::ChildError;
use kiln_fsutil::passwd::{Groups, Passwd};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ExecUser {
    pub uid: u32,
    pub gid: u32,
    /// Supplementary groups; only the implicit form (`name` or `uid`) gets any.
    pub groups: Vec<u32>,
    /// For a default `HOME`: the passwd entry's home, `/` without one.
    pub home: String,
}

/// `passwd`/`group` are the files' contents, `None` when the image has no such file.
pub(crate) fn resolve(spec: &str, passwd: Option<&str>, group: Option<&str>) -> Result<ExecUser, ChildError> {
    let users = passwd.map(Passwd::parse).unwrap_or_default();
    let groups = group.map(Groups::parse).unwrap_or_default();
    let home_of = |uid: u32| {
        users
            .by_uid(uid)
            .map(|u| u.home)
            .filter(|h| !h.is_empty())
            .unwrap_or("/")
            .to_string()
    };

    let (user_arg, group_arg) = match spec.split_once(':') {
        Some((u, g)) => (u, Some(g).filter(|g| !g.is_empty())),
        None => (spec, None),
    };
    if user_arg.is_empty() && group_arg.is_none() {
        return Ok(ExecUser {
            uid: 0,
            gid: 0,
            groups: Vec::new(),
            home: home_of(0),
        });
    }
    if let (Ok(uid), Some(Ok(gid))) = (user_arg.parse::<u32>(), group_arg.map(str::parse::<u32>)) {
        return Ok(ExecUser {
            uid,
            gid,
            groups: Vec::new(),
            home: home_of(uid),
        });
    }

    let uid_num = user_arg.parse::<u32>().ok();
    let matched = match uid_num {
        Some(n) => users.by_uid(n),
        None if user_arg.is_empty() => users.by_uid(0),
        None => users.by_name(user_arg),
    };
    let (uid, mut gid, home, name) = match (matched, uid_num) {
        (Some(u), _) => (u.uid, u.gid, home_of(u.uid), Some(u.name)),
        // A numeric user need not exist in the image, as with docker; its primary group is then 0.
        (None, Some(n)) => (n, 0, "/".to_string(), None),
        (None, None) if user_arg.is_empty() => (0, 0, "/".to_string(), None),
        (None, None) => {
            return Err(ChildError::UserNotFound {
                user: user_arg.to_string(),
            });
        }
    };

    let mut supplementary = Vec::new();
    match group_arg {
        Some(g) => {
            let gid_num = g.parse::<u32>().ok();
            match gid_num.map_or_else(|| groups.by_name(g), |n| groups.by_gid(n)) {
                Some(e) => gid = e.gid,
                None => match gid_num {
                    Some(n) => gid = n,
                    None => return Err(ChildError::GroupNotFound { group: g.to_string() }),
                },
            }
        }
        None => {
            if let Some(name) = name {
                supplementary = groups.of_member(name).map(|e| e.gid).collect();
            }
        }
    }
    Ok(ExecUser {
        uid,
        gid,
        groups: supplementary,
        home,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const PASSWD: &str = "root:x:0:0:root:/root:/bin/sh\n\
        # comment\n\
        nobody:x:65534:65534:nobody:/nonexistent:/bin/false\n\
        broken:x:notanumber:0::/:/bin/sh\n\
        app:x:1000:1000:App:/home/app:/bin/sh\n";
    const GROUP: &str = "root:x:0:\nnogroup:x:65534:\napp:x:1000:\nextra:x:2000:app,other\nwheel:x:10:root\n";

    fn r(spec: &str) -> Result<ExecUser, ChildError> {
        resolve(spec, Some(PASSWD), Some(GROUP))
    }

    #[test]
    fn root_by_default_without_supplementary_groups() {
        assert_eq!(
            r("").unwrap(),
            ExecUser {
                uid: 0,
                gid: 0,
                groups: vec![],
                home: "/root".into()
            }
        );
    }

    #[test]
    fn name_gets_primary_and_supplementary_groups() {
        assert_eq!(
            r("app").unwrap(),
            ExecUser {
                uid: 1000,
                gid: 1000,
                groups: vec![2000],
                home: "/home/app".into()
            }
        );
        assert_eq!(r("1000").unwrap(), r("app").unwrap());
        assert_eq!(r("root").unwrap().groups, vec![10]);
    }

    #[test]
    fn explicit_group_replaces_primary_and_drops_supplementary() {
        assert_eq!(
            r("app:0").unwrap(),
            ExecUser {
                uid: 1000,
                gid: 0,
                groups: vec![],
                home: "/home/app".into()
            }
        );
        assert_eq!(r("app:extra").unwrap().gid, 2000);
        assert_eq!(
            r("1000:2000").unwrap(),
            ExecUser {
                uid: 1000,
                gid: 2000,
                groups: vec![],
                home: "/home/app".into()
            }
        );
        assert_eq!(r("app:4242").unwrap().gid, 4242);
    }

    #[test]
    fn numeric_ids_need_not_exist() {
        assert_eq!(
            r("4321").unwrap(),
            ExecUser {
                uid: 4321,
                gid: 0,
                groups: vec![],
                home: "/".into()
            }
        );
        assert_eq!(resolve("5:6", None, None).unwrap().gid, 6);
    }

    #[test]
    fn unknown_names_are_errors() {
        assert!(matches!(r("ghost"), Err(ChildError::UserNotFound { user }) if user == "ghost"));
        assert!(matches!(r("app:ghosts"), Err(ChildError::GroupNotFound { group }) if group == "ghosts"));
        assert!(matches!(
            resolve("app", None, None),
            Err(ChildError::UserNotFound { .. })
        ));
        // A malformed line does not define a user.
        assert!(matches!(r("broken"), Err(ChildError::UserNotFound { .. })));
    }
}
