//! `peercomm group …`: group conversations, through the running daemon's
//! HTTP API (`/v1/groups`).
//!
//! A group has one owner (the node that created it), admins the owner
//! names, and members. Admins invite and remove members and rename the
//! group; an invited node accepts with `group join`. Every member can send
//! to the group and read its history.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{anyhow, Context};
use clap::{Args, Subcommand};
use futures::StreamExt;
use peercomm_node::{GroupId, PeerId};
use serde_json::{json, Value};

use crate::client::{api_try, open_events, parse_sse, print_json, Api, Failure};

/// Largest page the client asks for (the API's maximum).
const PAGE_MESSAGES: u32 = 500;

/// What `peercomm group` does.
#[derive(Debug, Subcommand)]
pub(crate) enum GroupAction {
    /// Create a group that this node owns, with this node its only member.
    /// Prints the new group's id; add people with `group invite`.
    Create {
        /// The group's name (at most 128 bytes), e.g. "climbing".
        name: String,
        /// What the group is for (at most 1024 bytes).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Invite a peer (admins only). The peer must run peercomm and be
    /// reachable through the DHT; it accepts with `group join`.
    Invite {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
        /// The peer to invite (as printed by its `peercomm id`).
        peer_id: PeerId,
    },
    /// Accept an invitation to a group (see `group list` for invitations).
    Join {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
    },
    /// Leave a group. The owner cannot leave its own group.
    Leave {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
    },
    /// Remove a member from a group (admins only).
    Remove {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
        /// The member to remove.
        peer_id: PeerId,
    },
    /// Make a member an admin, or with --revoke take the right away. Only
    /// the owner decides; an admin's request goes to the owner.
    Admin {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
        /// The member.
        peer_id: PeerId,
        /// Take the admin right away instead of granting it.
        #[arg(long)]
        revoke: bool,
    },
    /// Change a group's name and/or description (admins only).
    #[command(group(
        clap::ArgGroup::new("change")
            .required(true)
            .multiple(true)
            .args(["name", "description"])
    ))]
    Rename {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
        /// The new name (at most 128 bytes).
        #[arg(long, value_name = "NAME")]
        name: Option<String>,
        /// The new description (at most 1024 bytes; "" clears it).
        #[arg(long, value_name = "TEXT")]
        description: Option<String>,
    },
    /// Send a text message to every member of a group. Prints the message
    /// id once the message is safely stored; delivery continues in the daemon.
    Send {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
        /// The message text (at most 16 KiB).
        text: String,
    },
    /// List a group's members, with the owner and admins marked.
    Members {
        /// The group: its id (from `group list`) or its exact name.
        group: String,
    },
    /// List the groups this node knows: ones it is in, is invited to, has
    /// left or was removed from.
    List,
    /// Print a group's messages, oldest first; --follow keeps printing new ones.
    History(HistoryArgs),
}

/// Options of `peercomm group history`.
#[derive(Debug, Args)]
pub(crate) struct HistoryArgs {
    /// The group: its id (from `group list`) or its exact name.
    group: String,
    /// Only messages after this position (the `#N` printed before each
    /// message, or `next_after` with --json).
    #[arg(long, value_name = "N", default_value_t = 0)]
    after: i64,
    /// Print at most N messages.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..),
          conflicts_with = "follow")]
    limit: Option<u32>,
    /// Keep running and print messages as they arrive.
    #[arg(long)]
    follow: bool,
}

/// Runs `peercomm group <action>`.
pub(crate) async fn run(
    data_dir: &Path,
    action: &GroupAction,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let api = api_try!(data_dir, Api::locate(data_dir));
    match action {
        GroupAction::Create { name, description } => {
            let mut body = json!({ "name": name });
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let g = api_try!(data_dir, api.post("/v1/groups", body).await);
            if json {
                print_json(&g);
            } else {
                println!("{}", g["id"].as_str().unwrap_or("?"));
            }
        }
        GroupAction::Invite { group, peer_id } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let body = json!({ "peer": peer_id.to_base58() });
            let change = api_try!(
                data_dir,
                api.post(&format!("/v1/groups/{id}/members"), body).await
            );
            print_change(&change, &format!("invite {peer_id} to {group}"), json);
        }
        GroupAction::Join { group } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let g = api_try!(
                data_dir,
                api.post(&format!("/v1/groups/{id}/join"), json!({})).await
            );
            if json {
                print_json(&g);
            } else {
                println!(
                    "joined {} ({id}): {} members, epoch {}",
                    g["name"].as_str().unwrap_or("?"),
                    g["members"],
                    g["epoch"]
                );
            }
        }
        GroupAction::Leave { group } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let change = api_try!(
                data_dir,
                api.post(&format!("/v1/groups/{id}/leave"), json!({})).await
            );
            print_change(&change, &format!("leave {group}"), json);
        }
        GroupAction::Remove { group, peer_id } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let change = api_try!(
                data_dir,
                api.delete(&format!("/v1/groups/{id}/members/{peer_id}"))
                    .await
            );
            print_change(&change, &format!("remove {peer_id} from {group}"), json);
        }
        GroupAction::Admin {
            group,
            peer_id,
            revoke,
        } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let path = format!("/v1/groups/{id}/admins/{peer_id}");
            let (change, what) = if *revoke {
                (
                    api.delete(&path).await,
                    format!("take {peer_id}'s admin right in {group}"),
                )
            } else {
                (
                    api.put(&path).await,
                    format!("make {peer_id} an admin of {group}"),
                )
            };
            let change = api_try!(data_dir, change);
            print_change(&change, &what, json);
        }
        GroupAction::Rename {
            group,
            name,
            description,
        } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let mut body = json!({});
            if let Some(n) = name {
                body["name"] = json!(n);
            }
            if let Some(d) = description {
                body["description"] = json!(d);
            }
            let change = api_try!(data_dir, api.patch(&format!("/v1/groups/{id}"), body).await);
            print_change(&change, &format!("rename {group}"), json);
        }
        GroupAction::Send { group, text } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let m = api_try!(
                data_dir,
                api.post(
                    &format!("/v1/groups/{id}/messages"),
                    json!({ "body": text })
                )
                .await
            );
            if json {
                print_json(&m);
            } else {
                println!("{}", m["id"].as_str().unwrap_or("?"));
            }
        }
        GroupAction::Members { group } => {
            let id = api_try!(data_dir, resolve(&api, group).await);
            let list = api_try!(data_dir, api.get(&format!("/v1/groups/{id}/members")).await);
            if json {
                print_json(&list);
            } else {
                for m in list["members"].as_array().into_iter().flatten() {
                    println!("{}", member_line(m));
                }
            }
        }
        GroupAction::List => {
            let list = api_try!(data_dir, api.get("/v1/groups").await);
            if json {
                print_json(&list);
            } else {
                let groups = list["groups"].as_array().cloned().unwrap_or_default();
                if groups.is_empty() {
                    eprintln!("no groups (create one with `peercomm group create NAME`)");
                }
                for g in &groups {
                    println!("{}", group_line(g));
                }
            }
        }
        GroupAction::History(args) => return history(data_dir, &api, args, json).await,
    }
    Ok(ExitCode::SUCCESS)
}

/// The id of `group`: the argument itself if it is an id, else the one
/// group with that exact name.
async fn resolve(api: &Api, group: &str) -> Result<GroupId, Failure> {
    if let Ok(id) = group.parse::<GroupId>() {
        return Ok(id);
    }
    let list = api.get("/v1/groups").await?;
    let named: Vec<&Value> = list["groups"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|g| g["name"].as_str() == Some(group))
        .collect();
    let parse = |g: &Value| {
        g["id"]
            .as_str()
            .and_then(|id| id.parse::<GroupId>().ok())
            .ok_or_else(|| Failure::Other(anyhow!("the daemon listed a group without an id: {g}")))
    };
    match named.as_slice() {
        [one] => parse(one),
        [] => Err(Failure::Other(anyhow!(
            "no group is named {group:?}, and it is not a group id (32 hex digits); \
             `peercomm group list` shows the groups"
        ))),
        several => {
            let ids: Vec<String> = several
                .iter()
                .map(|g| {
                    format!(
                        "{} ({})",
                        g["id"].as_str().unwrap_or("?"),
                        g["state"].as_str().unwrap_or("?")
                    )
                })
                .collect();
            Err(Failure::Other(anyhow!(
                "{} groups are named {group:?}: {}; give the id instead",
                several.len(),
                ids.join(", ")
            )))
        }
    }
}

/// Prints what a membership or metadata change did.
fn print_change(change: &Value, what: &str, json: bool) {
    if json {
        print_json(change);
    } else {
        println!("{}", change_line(change, what));
    }
}

/// `invite X to G: done, the group is now in epoch 4`, or that the request
/// went to the owner.
fn change_line(change: &Value, what: &str) -> String {
    match change["status"].as_str() {
        Some("committed") => format!(
            "{what}: done, the group is now in epoch {}",
            change["epoch"]
        ),
        Some("requested") => format!(
            "{what}: asked the owner {}, which makes the change when it is reachable",
            change["owner"].as_str().unwrap_or("?")
        ),
        _ => format!("{what}: {change}"),
    }
}

/// `ID  STATE  N members  NAME`.
fn group_line(g: &Value) -> String {
    format!(
        "{}  {:<8} {:>5} members  {}",
        g["id"].as_str().unwrap_or("?"),
        g["state"].as_str().unwrap_or("?"),
        g["members"],
        g["name"].as_str().unwrap_or("")
    )
}

/// `PEER  owner, admin`.
fn member_line(m: &Value) -> String {
    let mut roles = Vec::new();
    if m["owner"] == true {
        roles.push("owner");
    }
    if m["admin"] == true {
        roles.push("admin");
    }
    let peer = m["peer"].as_str().unwrap_or("?");
    if roles.is_empty() {
        peer.to_string()
    } else {
        format!("{peer}  {}", roles.join(", "))
    }
}

/// `TIME  #SEQ  SENDER  TEXT`.
fn message_line(m: &Value) -> String {
    let when = m["created_ms"]
        .as_u64()
        .map(|ms| {
            humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms))
                .to_string()
        })
        .unwrap_or_default();
    format!(
        "{when}  #{}  {}  {}",
        m["seq"],
        m["sender"].as_str().unwrap_or("?"),
        m["body"].as_str().unwrap_or("")
    )
}

/// `peercomm group history`.
async fn history(
    data_dir: &Path,
    api: &Api,
    args: &HistoryArgs,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let id = api_try!(data_dir, resolve(api, &args.group).await);
    // Subscribe before reading, so nothing arrives unseen in between.
    let events = if args.follow {
        Some(api_try!(data_dir, open_events(api).await))
    } else {
        None
    };
    // One message per line when following (or for people); one object
    // `{"messages","next_after"}` otherwise.
    let streaming = args.follow || !json;
    let mut after = args.after;
    let mut left = args.limit;
    let mut collected = Vec::new();
    loop {
        let page_size = left.map_or(PAGE_MESSAGES, |n| n.min(PAGE_MESSAGES));
        if page_size == 0 {
            break;
        }
        let page = api_try!(data_dir, read_page(api, id, after, page_size).await);
        let n = page.len();
        for m in page {
            if let Some(seq) = m["seq"].as_i64() {
                after = after.max(seq);
            }
            if streaming {
                print_message(&m, json);
            } else {
                collected.push(m);
            }
        }
        left = left.map(|l| l.saturating_sub(u32::try_from(n).unwrap_or(u32::MAX)));
        if n < page_size as usize {
            break;
        }
    }
    if !args.follow {
        if json {
            let next_after = collected.last().map(|m| m["seq"].clone());
            print_json(&json!({ "messages": collected, "next_after": next_after }));
        } else if after == args.after {
            eprintln!("no messages");
        }
        return Ok(ExitCode::SUCCESS);
    }
    let Some(response) = events else {
        return Ok(ExitCode::SUCCESS);
    };
    let group = id.to_string();
    let mut stream = response.bytes_stream();
    let mut buffer = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.context("the event stream broke")?;
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        let mut fresh = false;
        while let Some(end) = buffer.find("\n\n") {
            let block: String = buffer.drain(..end + 2).collect();
            let (event, data) = parse_sse(&block);
            if event != "group_message" {
                continue;
            }
            let Ok(data) = serde_json::from_str::<Value>(&data) else {
                continue;
            };
            if data["group"].as_str() == Some(group.as_str())
                && data["seq"].as_i64().is_some_and(|seq| seq > after)
            {
                fresh = true;
            }
        }
        // Read from the cursor rather than message by message: a burst of
        // events costs one request, and none is missed if events were lost.
        while fresh {
            let page = api_try!(data_dir, read_page(api, id, after, PAGE_MESSAGES).await);
            fresh = page.len() == PAGE_MESSAGES as usize;
            for m in page {
                if let Some(seq) = m["seq"].as_i64() {
                    after = after.max(seq);
                }
                print_message(&m, json);
            }
        }
    }
    eprintln!("the daemon closed the event stream");
    Ok(ExitCode::FAILURE)
}

/// One page of a group's history after position `after`.
async fn read_page(api: &Api, id: GroupId, after: i64, limit: u32) -> Result<Vec<Value>, Failure> {
    let page = api
        .get(&format!(
            "/v1/groups/{id}/messages?after={after}&limit={limit}"
        ))
        .await?;
    Ok(page["messages"].as_array().cloned().unwrap_or_default())
}

fn print_message(m: &Value, json: bool) {
    if json {
        print_json(m);
    } else {
        println!("{}", message_line(m));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changes_read_as_sentences() {
        assert_eq!(
            change_line(&json!({"status": "committed", "epoch": 4}), "rename g"),
            "rename g: done, the group is now in epoch 4"
        );
        let line = change_line(
            &json!({"status": "requested", "owner": "12D3KooX"}),
            "leave g",
        );
        assert!(line.contains("asked the owner 12D3KooX"), "{line}");
    }

    #[test]
    fn members_show_their_roles() {
        assert_eq!(
            member_line(&json!({"peer": "p", "owner": true, "admin": true})),
            "p  owner, admin"
        );
        assert_eq!(
            member_line(&json!({"peer": "q", "owner": false, "admin": false})),
            "q"
        );
    }

    #[test]
    fn messages_show_position_sender_and_text() {
        let line = message_line(&json!({
            "seq": 7, "sender": "p", "body": "hi", "created_ms": 0
        }));
        assert_eq!(line, "1970-01-01T00:00:00Z  #7  p  hi");
    }

    #[test]
    fn the_cli_parses() {
        use clap::CommandFactory;
        #[derive(Debug, clap::Parser)]
        struct Probe {
            #[command(subcommand)]
            action: GroupAction,
        }
        Probe::command().debug_assert();
    }
}
