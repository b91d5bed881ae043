//! The world a scenario runs in: pools of registered users and named sets of rooms with
//! their members and history. Setup creates what is missing (bounded concurrency, progress)
//! and, with `--world-dir`, saves it as JSON (one file per server URL) so later runs reuse it.

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
};

use rand::{Rng, distributions::Alphanumeric};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{
    client::Session,
    error::{Error, Result},
    progress,
    scenarios::Ctx,
    tasks::{partition, run_bounded},
};

/// A registered user of the world.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct UserRec {
    pub(crate) username: String,
    #[serde(flatten)]
    pub(crate) session: Session,
}

impl UserRec {
    pub(crate) fn id(&self) -> &str {
        &self.session.user_id
    }

    pub(crate) fn token(&self) -> &str {
        &self.session.access_token
    }
}

/// A room of a room set.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(crate) struct RoomRec {
    pub(crate) room_id: String,
    /// Who should be joined; the first is the creator.
    pub(crate) wanted: Vec<String>,
    /// Who is joined.
    pub(crate) members: Vec<String>,
    /// Event IDs of the history messages sent by setup, in order.
    #[serde(default)]
    pub(crate) history: Vec<String>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(crate) struct World {
    pub(crate) url: String,
    /// Random; part of every username so worlds never collide on one server.
    pub(crate) id: String,
    pub(crate) password: String,
    pub(crate) next_user: u64,
    pub(crate) pools: BTreeMap<String, Vec<UserRec>>,
    pub(crate) room_sets: BTreeMap<String, Vec<RoomRec>>,
    #[serde(skip)]
    path: Option<PathBuf>,
}

fn random_string(length: usize) -> String {
    rand::thread_rng()
        .sample_iter(&Alphanumeric)
        .take(length)
        .map(char::from)
        .collect::<String>()
        .to_ascii_lowercase()
}

impl World {
    fn fresh(url: &str, path: Option<PathBuf>) -> Self {
        Self {
            url: url.to_owned(),
            id: random_string(6),
            password: random_string(20),
            path,
            ..Self::default()
        }
    }

    /// The saved world for `url` in `dir`, or a new one (saved there on first change).
    pub(crate) fn load(dir: Option<&Path>, url: &str) -> Result<Self> {
        let Some(dir) = dir else { return Ok(Self::fresh(url, None)) };
        std::fs::create_dir_all(dir)
            .map_err(|error| Error::new(format!("--world-dir {}: {error}", dir.display())))?;
        let name: String =
            url.chars().map(|c| if c.is_ascii_alphanumeric() { c } else { '_' }).collect();
        let path = dir.join(format!("world-{name}.json"));
        if !path.exists() {
            return Ok(Self::fresh(url, Some(path)));
        }
        let text = std::fs::read_to_string(&path)
            .map_err(|error| Error::new(format!("{}: {error}", path.display())))?;
        let mut world: Self = serde_json::from_str(&text)
            .map_err(|error| Error::new(format!("{}: {error}", path.display())))?;
        if world.url != url {
            return Err(Error::new(format!(
                "{} belongs to {}, not {url}",
                path.display(),
                world.url
            )));
        }
        world.path = Some(path);
        Ok(world)
    }

    pub(crate) fn save(&self) -> Result<()> {
        let Some(path) = &self.path else { return Ok(()) };
        let partial = path.with_extension("json.partial");
        std::fs::write(&partial, serde_json::to_vec_pretty(self)?)?;
        std::fs::rename(&partial, path)?;
        Ok(())
    }

    fn all_users(&self) -> impl Iterator<Item = &UserRec> {
        self.pools.values().flatten()
    }

    /// Checks that a reused world still exists on the server: tokens still valid (else logs
    /// everyone in again), users still there (else starts a fresh world).
    pub(crate) async fn validate(&mut self, ctx: &Ctx) -> Result<()> {
        let Some(first) = self.all_users().next().cloned() else { return Ok(()) };
        match ctx.api.whoami(first.token()).await {
            Ok(user_id) if user_id == first.id() => return Ok(()),
            Ok(user_id) => {
                return Err(Error::new(format!(
                    "saved token of {} belongs to {user_id}",
                    first.id()
                )));
            }
            Err(error) if error.is_errcode("M_UNKNOWN_TOKEN") => {}
            Err(error) => return Err(error.context("checking the saved world")),
        }
        if let Err(error) = ctx.api.login(&first.username, &self.password).await {
            progress::note(&format!(
                "the saved world for {} is gone from the server ({error}); starting a new one",
                self.url
            ));
            *self = Self::fresh(&self.url, self.path.take());
            return self.save();
        }
        progress::note("saved access tokens are no longer valid; logging the world's users in");
        let users: Vec<UserRec> = self.all_users().cloned().collect();
        let api = ctx.api.clone();
        let password = Arc::new(self.password.clone());
        let shared = Arc::new(users);
        let jobs = Arc::clone(&shared);
        let results = run_bounded(
            "login",
            shared.len(),
            ctx.setup_concurrency,
            ctx.setup_deadline,
            move |i| {
                let api = api.clone();
                let password = Arc::clone(&password);
                let username = jobs[i].username.clone();
                async move { api.login(&username, &password).await }
            },
        )
        .await;
        let outcome = partition(results);
        let sessions: HashMap<String, Session> = outcome
            .ok
            .into_iter()
            .map(|(i, session)| (shared[i].username.clone(), session))
            .collect();
        for user in self.pools.values_mut().flatten() {
            if let Some(session) = sessions.get(&user.username) {
                user.session = session.clone();
            }
        }
        self.save()?;
        if outcome.failed > 0 {
            return Err(Error::new(format!(
                "{} of the world's users could not log in: {}",
                outcome.failed,
                outcome.examples.join("; ")
            )));
        }
        Ok(())
    }

    pub(crate) fn user(&self, user_id: &str) -> Option<&UserRec> {
        self.all_users().find(|user| user.id() == user_id)
    }

    /// The first `count` users of `pool`, registering the missing ones.
    pub(crate) async fn ensure_pool(
        &mut self,
        ctx: &Ctx,
        pool: &str,
        count: usize,
    ) -> Result<Vec<UserRec>> {
        let have = self.pools.get(pool).map_or(0, Vec::len);
        if have < count {
            let missing = count - have;
            let first_serial = self.next_user;
            self.next_user += u64::try_from(missing).unwrap_or(u64::MAX);
            let prefix = format!("lt{}_{}_", self.id, pool.to_ascii_lowercase());
            let api = ctx.api.clone();
            let token = ctx.registration_token.clone();
            let password = self.password.clone();
            let label = format!("registering {missing} users ({pool})");
            let results =
                run_bounded(&label, missing, ctx.setup_concurrency, ctx.setup_deadline, move |i| {
                    let api = api.clone();
                    let token = token.clone();
                    let password = password.clone();
                    let username = format!("{prefix}{}", first_serial + i as u64);
                    async move {
                        let session = api.register(&username, &password, token.as_deref()).await?;
                        Ok(UserRec { username, session })
                    }
                })
                .await;
            let outcome = partition(results);
            self.pools
                .entry(pool.to_owned())
                .or_default()
                .extend(outcome.ok.into_iter().map(|(_, user)| user));
            self.save()?;
            if outcome.failed > 0 {
                return Err(Error::new(format!(
                    "{} registrations failed: {}",
                    outcome.failed,
                    outcome.examples.join("; ")
                )));
            }
        }
        Ok(self.pools.get(pool).into_iter().flatten().take(count).cloned().collect())
    }

    /// The first `count` rooms of `set`, creating missing ones and joining missing members.
    /// `wanted(i)` gives the members of the i-th room (creator first), `body(i)` its
    /// createRoom request.
    pub(crate) async fn ensure_rooms<W, B>(
        &mut self,
        ctx: &Ctx,
        set: &str,
        count: usize,
        wanted: W,
        body: B,
    ) -> Result<Vec<RoomRec>>
    where
        W: Fn(usize) -> Vec<UserRec>,
        B: Fn(usize) -> Value,
    {
        let have = self.room_sets.get(set).map_or(0, Vec::len);
        if have < count {
            let plans: Arc<Vec<(Vec<UserRec>, Value)>> =
                Arc::new((have..count).map(|i| (wanted(i), body(i))).collect());
            if plans.iter().any(|(members, _)| members.is_empty()) {
                return Err(Error::new("a room without members was asked for"));
            }
            let api = ctx.api.clone();
            let jobs = Arc::clone(&plans);
            let label = format!("creating {} rooms ({set})", plans.len());
            let results = run_bounded(
                &label,
                plans.len(),
                ctx.setup_concurrency,
                ctx.setup_deadline,
                move |i| {
                    let api = api.clone();
                    let jobs = Arc::clone(&jobs);
                    async move {
                        let (members, body) = &jobs[i];
                        api.create_room(members[0].token(), body.clone()).await
                    }
                },
            )
            .await;
            let outcome = partition(results);
            let rooms = self.room_sets.entry(set.to_owned()).or_default();
            for (i, room_id) in outcome.ok {
                let members = &plans[i].0;
                rooms.push(RoomRec {
                    room_id,
                    wanted: members.iter().map(|user| user.id().to_owned()).collect(),
                    members: vec![members[0].id().to_owned()],
                    history: Vec::new(),
                });
            }
            self.save()?;
            if outcome.failed > 0 {
                return Err(Error::new(format!(
                    "{} room creations failed: {}",
                    outcome.failed,
                    outcome.examples.join("; ")
                )));
            }
        }
        self.join_missing(ctx, set).await?;
        Ok(self.room_sets.get(set).into_iter().flatten().take(count).cloned().collect())
    }

    /// Joins every wanted member of `set`'s rooms who is not joined yet.
    async fn join_missing(&mut self, ctx: &Ctx, set: &str) -> Result<()> {
        let mut joins = Vec::new();
        for (index, room) in self.room_sets.get(set).into_iter().flatten().enumerate() {
            for user_id in &room.wanted {
                if !room.members.contains(user_id) {
                    let user = self
                        .user(user_id)
                        .ok_or_else(|| Error::new(format!("{user_id} is not in the world")))?;
                    joins.push((index, room.room_id.clone(), user.clone()));
                }
            }
        }
        if joins.is_empty() {
            return Ok(());
        }
        let joins = Arc::new(joins);
        let jobs = Arc::clone(&joins);
        let api = ctx.api.clone();
        let label = format!("joining {} members ({set})", joins.len());
        let results =
            run_bounded(&label, joins.len(), ctx.setup_concurrency, ctx.setup_deadline, move |i| {
                let api = api.clone();
                let jobs = Arc::clone(&jobs);
                async move {
                    let (_, room_id, user) = &jobs[i];
                    api.join(user.token(), room_id).await.map(|_| ())
                }
            })
            .await;
        let outcome = partition(results);
        if let Some(rooms) = self.room_sets.get_mut(set) {
            for (i, ()) in outcome.ok {
                let (index, _, user) = &joins[i];
                if let Some(room) = rooms.get_mut(*index) {
                    room.members.push(user.id().to_owned());
                }
            }
        }
        self.save()?;
        if outcome.failed > 0 {
            return Err(Error::new(format!(
                "{} joins failed: {}",
                outcome.failed,
                outcome.examples.join("; ")
            )));
        }
        Ok(())
    }

    /// Gives every room of `set` at least `per_room` history messages, sent by its creator
    /// one after another (so the saved order is the timeline order).
    pub(crate) async fn ensure_history(
        &mut self,
        ctx: &Ctx,
        set: &str,
        per_room: usize,
    ) -> Result<Vec<RoomRec>> {
        let mut plans = Vec::new();
        for (index, room) in self.room_sets.get(set).into_iter().flatten().enumerate() {
            if room.history.len() < per_room {
                let creator =
                    room.wanted.first().and_then(|user_id| self.user(user_id)).ok_or_else(
                        || Error::new(format!("creator of {} unknown", room.room_id)),
                    )?;
                plans.push((index, room.room_id.clone(), creator.clone(), room.history.len()));
            }
        }
        if !plans.is_empty() {
            let plans = Arc::new(plans);
            let jobs = Arc::clone(&plans);
            let api = ctx.api.clone();
            let run_id = ctx.run_id.clone();
            let label = format!("history: {per_room} messages in {} rooms ({set})", plans.len());
            let results = run_bounded(
                &label,
                plans.len(),
                ctx.setup_concurrency,
                ctx.setup_deadline,
                move |i| {
                    let api = api.clone();
                    let jobs = Arc::clone(&jobs);
                    let run_id = run_id.clone();
                    async move {
                        let (_, room_id, creator, have) = &jobs[i];
                        let mut sent = Vec::new();
                        for n in *have..per_room {
                            let content = serde_json::json!({
                                "msgtype": "m.text",
                                "body": format!("history message {n} of {room_id}"),
                            });
                            let txn = format!("lt{run_id}-h{i}-{n}");
                            match api.send_message(creator.token(), room_id, &txn, &content).await {
                                Ok(event_id) => sent.push(event_id),
                                // Keep what was sent so it is saved.
                                Err(error) if sent.is_empty() => return Err(error),
                                Err(_) => break,
                            }
                        }
                        Ok(sent)
                    }
                },
            )
            .await;
            let outcome = partition(results);
            if let Some(rooms) = self.room_sets.get_mut(set) {
                for (i, sent) in outcome.ok {
                    if let Some(room) = rooms.get_mut(plans[i].0) {
                        room.history.extend(sent);
                    }
                }
            }
            self.save()?;
            if outcome.failed > 0 {
                return Err(Error::new(format!(
                    "history failed in {} rooms: {}",
                    outcome.failed,
                    outcome.examples.join("; ")
                )));
            }
            let short = self
                .room_sets
                .get(set)
                .into_iter()
                .flatten()
                .filter(|room| room.history.len() < per_room)
                .count();
            if short > 0 {
                return Err(Error::new(format!("{short} rooms are short of history")));
            }
        }
        Ok(self.room_sets.get(set).cloned().unwrap_or_default())
    }
}
