//! The pages, as maud templates: every interpolation is escaped; the only
//! unescaped text is the constant style and script of `assets`.

use maud::{DOCTYPE, Markup, PreEscaped, html};
use megalith::event::nip19;
use megalith::{Event, Pubkey};

use crate::assets::{SCRIPT, STYLE};
use crate::banner::Banner;
use crate::profile::Profile;
use crate::text::{self, Piece};

/// Characters of a post shown before the rest goes behind "show all".
const SHOWN_CHARS: usize = 600;

/// A post ready to show: the event, its author, and for a repost the
/// reposted note when it came embedded and valid.
#[derive(Debug, Clone)]
pub struct PostView {
    pub event: Event,
    pub author: Profile,
    pub reposted: Option<(Event, Profile)>,
}

/// Which posts a timeline shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// The follows' posts.
    Feed,
    /// The person's own posts.
    Author,
}

/// The link to a person's own posts.
pub fn author_href(npub: &str) -> String {
    format!("/timeline?npub={npub}&mode=author")
}

fn layout(title: &str, live: bool, body_attrs: Option<&BodyData>, content: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                meta name="color-scheme" content="light dark";
                meta name="referrer" content="no-referrer";
                title { (title) }
                style { (PreEscaped(STYLE)) }
                @if live {
                    noscript { meta http-equiv="refresh" content="3"; }
                }
            }
            @match body_attrs {
                Some(d) => body data-npub=(d.npub) data-limit=(d.limit)
                    data-mode=[d.mode] data-live=[d.live.then_some("1")] {
                    main { (content) }
                    script { (PreEscaped(SCRIPT)) }
                },
                None => body { main { (content) } },
            }
        }
    }
}

/// What the page's script reads from `<body>`.
struct BodyData {
    npub: String,
    limit: usize,
    mode: Option<&'static str>,
    live: bool,
}

fn form(value: &str) -> Markup {
    html! {
        form action="/start" method="get" {
            input type="text" name="npub" value=(value) required
                placeholder="npub1…, nprofile1… or hex key"
                aria-label="Your npub" autocomplete="off" spellcheck="false";
            button type="submit" { "Show my feed" }
        }
    }
}

/// `GET /`: the form.
pub fn home() -> Markup {
    layout(
        "Megalith feed",
        false,
        None,
        html! {
            h1 { "See your Nostr feed" }
            p.hint { "Paste your public key. The posts of the people you follow are fetched from their relays and shown here as they arrive." }
            (form(""))
        },
    )
}

/// A page that says what is wrong with the request, and the form again.
pub fn error(title: &str, message: &str, value: &str) -> Markup {
    layout(
        title,
        false,
        None,
        html! {
            header { a.home href="/" { "Megalith feed" } }
            h1 { (title) }
            p.error role="alert" { (message) }
            (form(value))
        },
    )
}

/// What `/timeline` shows.
#[derive(Debug)]
pub struct Timeline<'a> {
    pub person: Pubkey,
    pub profile: &'a Profile,
    pub mode: Mode,
    pub posts: &'a [PostView],
    pub banner: &'a Banner,
    /// A job ran or runs for this person.
    pub has_job: bool,
    /// The person's contact list is in the store (feed mode).
    pub has_contacts: bool,
    /// The link to the next older page.
    pub older: Option<String>,
    /// The first page (no cursor): it updates itself while the job runs.
    pub first_page: bool,
    pub limit: usize,
    pub now: u64,
}

/// `GET /timeline`.
pub fn timeline(t: &Timeline<'_>) -> Markup {
    let npub = nip19::encode_npub(&t.person);
    let name = t.profile.shown_name(&t.person);
    let live = t.first_page && !t.banner.done;
    let (title, other) = match t.mode {
        Mode::Feed => (
            format!("{name}'s feed"),
            html! { a href=(author_href(&npub)) { "their posts" } },
        ),
        Mode::Author => (
            format!("Posts by {name}"),
            html! { a href=(format!("/timeline?npub={npub}")) { "their feed" } },
        ),
    };
    let data = BodyData {
        npub: npub.clone(),
        limit: t.limit,
        mode: (t.mode == Mode::Author).then_some("author"),
        live,
    };
    layout(
        &title,
        live,
        Some(&data),
        html! {
            header {
                a.home href="/" { "Megalith feed" }
                span.who { bdi { (title) } " · " (other) }
            }
            div #banner .banner.failed[t.banner.failed] role="status" aria-live="polite"
                hidden[t.banner.banner.is_empty()] { (t.banner.banner) }
            @if t.posts.is_empty() {
                p #empty .empty { (empty_text(t)) }
                @if !t.has_job {
                    p { a href=(format!("/start?npub={npub}")) { "Fetch this feed from the relays" } }
                }
            }
            ol #posts .posts {
                @for post in t.posts { (post_item(post, t.now)) }
            }
            // A page that updates itself keeps the link (hidden while there
            // is nothing to page to): its script points it past the last
            // post it shows.
            @if t.older.is_some() || live {
                nav.more hidden[t.older.is_none()] {
                    a #older href=(t.older.as_deref().unwrap_or("#")) rel="next" { "Older posts" }
                }
            }
        },
    )
}

fn empty_text(t: &Timeline<'_>) -> &'static str {
    match (t.first_page, t.mode) {
        (false, _) => "No older posts.",
        (true, Mode::Feed) if !t.has_contacts && !t.banner.done => {
            "No posts yet: the feed is being fetched."
        }
        (true, Mode::Feed) if !t.has_contacts => {
            "No contact list of this person is stored, so there is no feed to show."
        }
        (true, _) if !t.banner.done => "No posts yet: they appear here as they arrive.",
        (true, _) => "No posts to show.",
    }
}

/// The posts alone (what `/events` sends for the script to place).
pub fn post_items(posts: &[PostView], now: u64) -> Markup {
    html! { @for post in posts { (post_item(post, now)) } }
}

fn avatar(pubkey: &Pubkey, profile: &Profile) -> Markup {
    html! {
        @match &profile.picture {
            Some(url) => img.avatar src=(url) alt="" width="40" height="40"
                loading="lazy" decoding="async" referrerpolicy="no-referrer";
            None => span.avatar aria-hidden="true" { (profile.initials(pubkey)) },
        }
    }
}

fn meta(pubkey: &Pubkey, profile: &Profile, created_at: u64, now: u64) -> Markup {
    let npub = nip19::encode_npub(pubkey);
    html! {
        div.meta {
            a.name href=(author_href(&npub)) { bdi { (profile.shown_name(pubkey)) } }
            time datetime=(text::iso(created_at)) title=(text::exact(created_at)) {
                (text::ago(now, created_at))
            }
        }
    }
}

fn post_item(post: &PostView, now: u64) -> Markup {
    let e = &post.event;
    html! {
        li.post id=(format!("e-{}", e.id.to_hex())) data-t=(e.created_at) {
            (avatar(&e.pubkey, &post.author))
            div.body {
                (meta(&e.pubkey, &post.author, e.created_at, now))
                @if e.kind == 6 {
                    div.repost { "↻ reposted" }
                    @match &post.reposted {
                        Some((inner, author)) => div.quoted {
                            (meta(&inner.pubkey, author, inner.created_at, now))
                            (body_text(&inner.content))
                        },
                        None => div.quoted { (repost_reference(e)) },
                    }
                } @else {
                    (body_text(&e.content))
                }
            }
        }
    }
}

/// A repost whose note did not come embedded: a reference to it.
fn repost_reference(repost: &Event) -> Markup {
    let target = repost
        .tags
        .iter()
        .find(|t| t.len() >= 2 && t[0] == "e")
        .and_then(|t| megalith::EventId::from_hex(&t[1]).ok());
    html! {
        @match target {
            Some(id) => {
                @let note = nip19::encode_note(&id);
                p.text { "a note: " a href=(format!("nostr:{note}")) { (text::short_reference(&note)) } }
            },
            None => p.text.empty { "a note that was not included" },
        }
    }
}

fn body_text(content: &str) -> Markup {
    let (head, rest) = text::cut(content, SHOWN_CHARS);
    html! {
        div.text dir="auto" {
            (pieces(head))
            @if !rest.is_empty() {
                details {
                    summary { "show all (" (text::thousands(content.chars().count() as u64)) " characters)" }
                    (pieces(rest))
                }
            }
        }
    }
}

fn pieces(text_: &str) -> Markup {
    html! {
        @for piece in text::pieces(text_) {
            @match piece {
                Piece::Text(t) => (t),
                Piece::Url(url) => a href=(url) rel="nofollow noopener noreferrer ugc" { (url) },
                Piece::Person { bech32, pubkey } => {
                    @let npub = nip19::encode_npub(&pubkey);
                    a href=(author_href(&npub)) { "@" (text::short_reference(bech32)) }
                },
                Piece::Reference(r) => a href=(format!("nostr:{r}")) { (text::short_reference(r)) },
            }
        }
    }
}
