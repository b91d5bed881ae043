//! `users` commands: create accounts, reset passwords, deactivate, grant and revoke admin.

use std::{fmt::Write, ops::ControlFlow, sync::Arc};

use clap::Subcommand;
use rand::{Rng, distributions::Alphanumeric};
use ruma::{OwnedUserId, UserId};

use crate::{
    Error, Result, Services,
    accounts::{
        Devices, UserMessage, deactivate, passwords,
        registration::{self, NewAccount},
    },
    rooms::admin_room,
    storage::{
        Direction,
        codec::{Json, Prefix},
        users::{USERS_TABLE, UserRecord},
    },
};

#[derive(Subcommand, Debug)]
pub(super) enum UsersCommand {
    /// Create a local account; a password is generated when none is given.
    #[command(alias = "create")]
    CreateUser { username: String, password: Option<String> },
    /// Set a new password (generated when none is given) and log out every device.
    ResetPassword { username: String, password: Option<String> },
    /// Deactivate an account: it can never log in again.
    Deactivate { user_id: String },
    /// Make a user a server admin.
    MakeUserAdmin { user_id: String },
    /// Take server admin rights away from a user.
    RevokeAdmin { user_id: String },
    /// List local accounts.
    #[command(alias = "list")]
    ListUsers,
}

fn generated_password() -> String {
    rand::thread_rng().sample_iter(&Alphanumeric).take(25).map(char::from).collect()
}

/// Accepts `@name:server` or a bare localpart of this server.
pub(super) fn local_user(services: &Services, typed: &str) -> Result<OwnedUserId> {
    let user = if typed.starts_with('@') {
        UserId::parse(typed).map_err(|error| Error::invalid_param(format!("{typed}: {error}")))?
    } else {
        UserId::parse_with_server_name(typed.to_lowercase(), &services.config.server_name)
            .map_err(|error| Error::invalid_param(format!("{typed}: {error}")))?
    };
    if user.server_name() != services.config.server_name {
        return Err(Error::invalid_param(format!("{user} is not a user of this server")));
    }
    Ok(user)
}

fn existing(services: &Services, user: &UserId) -> Result<UserRecord> {
    services
        .accounts
        .record(user)?
        .ok_or_else(|| Error::not_found(format!("{user} does not exist")))
}

pub(super) async fn run(services: &Arc<Services>, command: UsersCommand) -> Result<String> {
    let accounts = &services.accounts;
    match command {
        UsersCommand::CreateUser { username, password } => {
            let user = accounts.check_localpart(&username)?;
            let password = password.unwrap_or_else(generated_password);
            let hash = passwords::hash(password.clone()).await?;
            let account = NewAccount {
                user: user.clone(),
                password_hash: Some(hash),
                display_name: user.localpart().to_owned(),
                guest: false,
                registration_token: None,
            };
            let admin =
                registration::register(accounts, &services.rooms, &services.config, account)
                    .await?;
            let role = if admin { " (the server's first admin)" } else { "" };
            Ok(format!("Created {user}{role} with password `{password}`."))
        }
        UsersCommand::ResetPassword { username, password } => {
            let user = local_user(services, &username)?;
            existing(services, &user)?;
            let password = password.unwrap_or_else(generated_password);
            let hash = passwords::hash(password.clone()).await?;
            accounts
                .call(&user, |reply| UserMessage::SetPassword { hash: Some(hash), reply })
                .await?;
            accounts
                .call(&user, |reply| UserMessage::RemoveDevices { devices: Devices::All, reply })
                .await?;
            Ok(format!(
                "Password of {user} reset to `{password}`; all its devices were logged out."
            ))
        }
        UsersCommand::Deactivate { user_id } => {
            let user = local_user(services, &user_id)?;
            existing(services, &user)?;
            deactivate::deactivate(accounts, &services.rooms, &services.push, &user).await?;
            Ok(format!("Deactivated {user}."))
        }
        UsersCommand::MakeUserAdmin { user_id } => {
            let user = local_user(services, &user_id)?;
            existing(services, &user)?;
            accounts.call(&user, |reply| UserMessage::SetAdmin { admin: true, reply }).await?;
            admin_room::join_admin(&services.rooms, &services.config, &user).await?;
            Ok(format!("{user} is now a server admin."))
        }
        UsersCommand::RevokeAdmin { user_id } => {
            let user = local_user(services, &user_id)?;
            existing(services, &user)?;
            accounts.call(&user, |reply| UserMessage::SetAdmin { admin: false, reply }).await?;
            admin_room::remove_admin(&services.rooms, &services.config, &user).await?;
            Ok(format!("{user} is no longer a server admin."))
        }
        UsersCommand::ListUsers => {
            let mut out = String::new();
            let mut count = 0usize;
            USERS_TABLE.scan(
                services.storage.engine(),
                &Prefix::all(),
                None,
                Direction::Forward,
                |user, Json(record)| {
                    count += 1;
                    let mut flags = Vec::new();
                    if record.admin {
                        flags.push("admin");
                    }
                    if record.guest {
                        flags.push("guest");
                    }
                    if record.deactivated {
                        flags.push("deactivated");
                    }
                    let _ = writeln!(
                        out,
                        "- {user} {}",
                        if flags.is_empty() {
                            String::new()
                        } else {
                            format!("({})", flags.join(", "))
                        }
                    );
                    ControlFlow::Continue(())
                },
            )?;
            Ok(format!("Users ({count}):\n{out}"))
        }
    }
}
