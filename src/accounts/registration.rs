//! Creating local accounts: registration (through the client API or an admin command), the
//! server's first admin (the first account registered, who also joins the admin room), the
//! server user, and the own users of application services.

use axum::http::StatusCode;
use ruma::{OwnedUserId, UserId, api::error::ErrorKind};
use serde_json::json;

use super::{Accounts, UserMessage};
use crate::{
    Config, Error, Result,
    rooms::{Rooms, admin_room},
    storage::{Batch, users::UserRecord},
};

/// A local account to create.
#[derive(Debug)]
pub struct NewAccount {
    pub user: OwnedUserId,
    pub password_hash: Option<String>,
    pub display_name: String,
    pub guest: bool,
    /// A registration token this registration uses up (counted in the same write).
    pub registration_token: Option<String>,
}

impl Accounts {
    /// Creates a local account. The first account that is not a guest becomes the server's
    /// first admin: `Ok(true)` says so. Registrations are serialised, since that decision and
    /// the token counts depend on the previous one; guests take no part in either.
    pub async fn create_account(&self, account: NewAccount) -> Result<bool> {
        let NewAccount { user, password_hash, display_name, guest, registration_token } = account;
        let profile = vec![("displayname".to_owned(), json!(display_name))];
        if guest {
            let record = self.new_record(password_hash, true, false);
            self.call(&user, |reply| UserMessage::Create {
                record,
                profile,
                also: Batch::new(),
                reply,
            })
            .await?;
            return Ok(false);
        }
        let _registering = self.registration.lock().await;
        let mut also = Batch::new();
        if let Some(token) = &registration_token {
            self.use_registration_token(token, &mut also)?;
        }
        let admin = self.first_admin_pending()?;
        if admin {
            Self::mark_first_admin(&mut also);
        }
        let record = self.new_record(password_hash, false, admin);
        self.call(&user, |reply| UserMessage::Create { record, profile, also, reply }).await?;
        Ok(admin)
    }

    /// Creates the server user (an admin without a password) unless it exists.
    pub async fn ensure_server_user(&self, user: &UserId) -> Result<()> {
        if self.record(user)?.is_some() {
            return Ok(());
        }
        let record = self.new_record(None, false, true);
        let profile = vec![("displayname".to_owned(), json!("Server"))];
        self.call(user, |reply| UserMessage::Create { record, profile, also: Batch::new(), reply })
            .await
    }

    /// Creates the own user of the application service `appservice` unless it exists. A user
    /// of that name that is not an application service's (a person, the server user) is
    /// never taken over: that is an error naming it.
    pub async fn ensure_appservice_user(&self, user: &UserId, appservice: &str) -> Result<()> {
        if let Some(record) = self.record(user)? {
            return match record.appservice {
                Some(_) => Ok(()),
                None => Err(Error::matrix(
                    StatusCode::BAD_REQUEST,
                    ErrorKind::UserInUse,
                    format!("{user} already exists and is not an application service's user"),
                )),
            };
        }
        let mut record = self.new_record(None, false, false);
        record.appservice = Some(appservice.to_owned());
        let profile = vec![("displayname".to_owned(), json!(user.localpart()))];
        self.call(user, |reply| UserMessage::Create { record, profile, also: Batch::new(), reply })
            .await
    }

    fn new_record(&self, password_hash: Option<String>, guest: bool, admin: bool) -> UserRecord {
        UserRecord {
            password_hash,
            created_ms: self.time.now_ms(),
            guest,
            admin,
            deactivated: false,
            appservice: None,
        }
    }
}

/// Creates an account ([`Accounts::create_account`]) and brings the server's first admin into
/// the admin room. `Ok(true)` when the account is that admin.
pub async fn register(
    accounts: &Accounts,
    rooms: &Rooms,
    config: &Config,
    account: NewAccount,
) -> Result<bool> {
    let user = account.user.clone();
    let admin = accounts.create_account(account).await?;
    if admin {
        admin_room::join_admin(rooms, config, &user).await?;
    }
    Ok(admin)
}
