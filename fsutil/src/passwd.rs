//! The parser of an image's /etc/passwd and /etc/group, shared by `USER` (`sandbox::user`) and `--chown`
//! (`fileop::owner`). Only the reading and lookup are shared: the two resolve a user spec by different rules
//! (for `--chown=42` the gid is 42, for `USER 42` it is 0, as docker does).
//!
//! Lines whose ids do not parse are skipped rather than read as 0 (runc's behaviour): a typo must not make a
//! user root. Blank lines and `#` comments define nobody.

pub struct PasswdEntry<'a> {
    pub name: &'a str,
    pub uid: u32,
    pub gid: u32,
    /// Empty when the line has none.
    pub home: &'a str,
}

pub struct GroupEntry<'a> {
    pub name: &'a str,
    pub gid: u32,
    pub members: Vec<&'a str>,
}

/// The users of an /etc/passwd, in file order.
#[derive(Default)]
pub struct Passwd<'a>(Vec<PasswdEntry<'a>>);

/// The groups of an /etc/group, in file order.
#[derive(Default)]
pub struct Groups<'a>(Vec<GroupEntry<'a>>);

fn records(text: &str) -> impl Iterator<Item = Vec<&str>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split(':').collect())
}

impl<'a> Passwd<'a> {
    pub fn parse(text: &'a str) -> Self {
        Passwd(
            records(text)
                .filter_map(|f| {
                    Some(PasswdEntry {
                        name: f.first()?,
                        uid: f.get(2)?.parse().ok()?,
                        gid: f.get(3)?.parse().ok()?,
                        home: f.get(5).copied().unwrap_or(""),
                    })
                })
                .collect(),
        )
    }

    /// The first user called `name`.
    pub fn by_name(&self, name: &str) -> Option<&PasswdEntry<'a>> {
        self.0.iter().find(|u| u.name == name)
    }

    /// The first user with `uid`.
    pub fn by_uid(&self, uid: u32) -> Option<&PasswdEntry<'a>> {
        self.0.iter().find(|u| u.uid == uid)
    }
}

impl<'a> Groups<'a> {
    pub fn parse(text: &'a str) -> Self {
        Groups(
            records(text)
                .filter_map(|f| {
                    Some(GroupEntry {
                        name: f.first()?,
                        gid: f.get(2)?.parse().ok()?,
                        members: f
                            .get(3)
                            .map(|m| m.split(',').filter(|s| !s.is_empty()).collect())
                            .unwrap_or_default(),
                    })
                })
                .collect(),
        )
    }

    /// The first group called `name`.
    pub fn by_name(&self, name: &str) -> Option<&GroupEntry<'a>> {
        self.0.iter().find(|g| g.name == name)
    }

    /// The first group with `gid`.
    pub fn by_gid(&self, gid: u32) -> Option<&GroupEntry<'a>> {
        self.0.iter().find(|g| g.gid == gid)
    }

    /// The groups that list `user` as a member, in file order.
    pub fn of_member<'s>(&'s self, user: &'s str) -> impl Iterator<Item = &'s GroupEntry<'a>> {
        self.0.iter().filter(move |g| g.members.contains(&user))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_lines_and_comments_define_nobody() {
        let passwd = Passwd::parse(
            "# root:x:0:0::/root:/bin/sh\n\nbroken:x:notanumber:0::/:/bin/sh\n  app:x:1000:1001:App:/home/app:/bin/sh  \n\
             short:x:5\nbroken:x:7:7\n",
        );
        assert!(passwd.by_uid(0).is_none());
        let app = passwd.by_name("app").expect("app");
        assert_eq!((app.uid, app.gid, app.home), (1000, 1001, "/home/app"));
        assert!(passwd.by_name("short").is_none());
        // A later well-formed line of the same name still counts.
        assert_eq!(passwd.by_name("broken").map(|u| (u.uid, u.home)), Some((7, "")));

        let groups = Groups::parse("wheel:x:10:root,app\nbad:x:x:\nstaff:x:50:app\n");
        assert_eq!(groups.by_name("wheel").map(|g| g.gid), Some(10));
        assert_eq!(groups.by_gid(50).map(|g| g.name), Some("staff"));
        assert!(groups.by_name("bad").is_none());
        assert_eq!(
            groups.of_member("app").map(|g| g.gid).collect::<Vec<_>>(),
            vec![10, 50]
        );
    }
}
