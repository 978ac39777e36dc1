//! The pages' one style sheet and one script, both inline, and the
//! Content-Security-Policy that allows exactly them (by hash) and nothing
//! else of the kind.

use std::sync::LazyLock;

use base64::Engine;
use sha2::{Digest, Sha256};

/// System fonts, one column, light and dark.
pub const STYLE: &str = r#":root{color-scheme:light dark;--bg:#fafaf9;--fg:#1c1917;--muted:#6b6560;--line:#e7e5e4;--accent:#6d28d9;--card:#fff}
@media (prefers-color-scheme:dark){:root{--bg:#0c0a09;--fg:#e7e5e4;--muted:#a8a29e;--line:#292524;--accent:#a78bfa;--card:#1c1917}}
*{box-sizing:border-box}
body{margin:0;background:var(--bg);color:var(--fg);font:16px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif}
main{max-width:42rem;margin:0 auto;padding:1rem}
header{display:flex;gap:.75rem;align-items:baseline;flex-wrap:wrap;padding:.25rem 0 .75rem;border-bottom:1px solid var(--line)}
header .home{font-weight:700;color:var(--fg);text-decoration:none}
header .who{color:var(--muted);min-width:0;overflow-wrap:anywhere}
a{color:var(--accent)}
h1{font-size:1.6rem;margin:2rem 0 .5rem}
.banner{margin:1rem 0;padding:.75rem 1rem;border-radius:.5rem;background:var(--card);border:1px solid var(--line)}
.banner.failed{border-color:#dc2626}
.posts{list-style:none;margin:0;padding:0}
.post{display:flex;gap:.75rem;padding:1rem 0;border-bottom:1px solid var(--line)}
.avatar{flex:none;width:2.5rem;height:2.5rem;border-radius:50%;object-fit:cover;background:var(--line);display:flex;align-items:center;justify-content:center;font-size:.85rem;color:var(--muted);overflow:hidden}
.body{min-width:0;flex:1}
.meta{display:flex;gap:.5rem;align-items:baseline;color:var(--muted);font-size:.9rem;min-width:0}
.meta .name{color:var(--fg);font-weight:600;text-decoration:none;overflow:hidden;text-overflow:ellipsis;white-space:nowrap;min-width:0}
.meta time{flex:none}
.text{white-space:pre-wrap;overflow-wrap:anywhere;unicode-bidi:plaintext;margin-top:.15rem}
bdi{unicode-bidi:isolate}
.repost{color:var(--muted);font-size:.9rem}
.quoted{border-left:3px solid var(--line);padding-left:.75rem;margin-top:.35rem}
form{display:flex;gap:.5rem;flex-wrap:wrap;margin:1.25rem 0}
input{flex:1 1 16rem;min-width:0;font:inherit;padding:.6rem .75rem;border:1px solid var(--line);border-radius:.5rem;background:var(--card);color:var(--fg)}
button{font:inherit;padding:.6rem 1.1rem;border:0;border-radius:.5rem;background:var(--accent);color:#fff;cursor:pointer}
.more{padding:1.5rem 0;text-align:center}
.hint,.empty{color:var(--muted)}
.error{border-left:4px solid #dc2626;padding:.5rem 1rem;background:var(--card)}
details summary{cursor:pointer;color:var(--accent)}"#;

/// Opens `/events` and puts each post not yet shown at its place (newest
/// first, ties by lowest id), points "Older posts" past the last post shown,
/// updates the banner, stops when the job is done. Kept under 2 KB (a test
/// checks).
pub const SCRIPT: &str = r#"(()=>{const d=document.body.dataset,l=document.getElementById('posts'),b=document.getElementById('banner');if(!d.live||!l||!window.EventSource)return;const s=new EventSource('/events?npub='+encodeURIComponent(d.npub)+'&limit='+d.limit+(d.mode?'&mode='+d.mode:''));s.addEventListener('status',e=>{const v=JSON.parse(e.data);if(b){b.textContent=v.banner||'';b.hidden=!v.banner;b.className='banner'+(v.failed?' failed':'')}if(v.done)s.close()});s.addEventListener('posts',e=>{const t=document.createElement('template');t.innerHTML=JSON.parse(e.data);for(const p of [...t.content.children]){if(!p.id||document.getElementById(p.id))continue;const k=+p.dataset.t;let a=null;for(const q of l.children){const u=+q.dataset.t;if(u<k||(u===k&&q.id>p.id)){a=q;break}}l.insertBefore(p,a)}const m=document.getElementById('empty');if(m&&l.children.length)m.remove();const o=document.getElementById('older'),z=l.lastElementChild;if(o&&z){o.href='/timeline?npub='+encodeURIComponent(d.npub)+'&until='+z.dataset.t+':'+z.id.slice(2)+'&limit='+d.limit+(d.mode?'&mode='+d.mode:'');o.parentNode.hidden=false}})})();"#;

fn hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The policy every page is sent with.
pub static CSP: LazyLock<String> = LazyLock::new(|| {
    format!(
        "default-src 'none'; script-src {}; style-src {}; img-src https:; connect-src 'self'; \
         form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
        hash(SCRIPT),
        hash(STYLE)
    )
});

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_script_is_small_and_the_policy_names_both_hashes() {
        assert!(SCRIPT.len() < 2_048, "{} bytes", SCRIPT.len());
        assert!(CSP.contains(&hash(SCRIPT)) && CSP.contains(&hash(STYLE)));
        assert!(!CSP.contains("unsafe-inline") && !CSP.contains("unsafe-eval"));
        // A known vector: sha256 of the empty string.
        assert_eq!(
            hash(""),
            "'sha256-47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU='"
        );
    }
}
