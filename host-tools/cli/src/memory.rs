//! `enigma memory ...` and the memory side of `enigma chat --memory`: callers of the `memory` module's
//! `vector_search` and `conversation_storage`, hosted (with the wanted set of modules) for the command's
//! length.

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use enigma_modules::capability::{ChatMessage, ConversationStorage, Passage, VectorSearch};
use enigma_modules::ModuleManager;
use std::path::{Path, PathBuf};
use std::sync::Arc;

#[derive(Subcommand, Debug)]
pub enum MemoryCommand {
    /// Embed texts and keep them as passages (each argument is one passage).
    Add {
        /// The texts to keep, one passage each.
        #[arg(required = true)]
        texts: Vec<String>,
        /// Where the passages come from, shown with them.
        #[arg(long, default_value = "note")]
        source: String,
    },
    /// The passages nearest a query by meaning, best first, with their cosine similarity.
    Search {
        /// What to look for, in words.
        query: String,
        /// How many passages.
        #[arg(short = 'k', long, default_value_t = 5)]
        top: usize,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Stored conversations; with --entries, the passages.
    List {
        /// List the stored passages instead of the conversations.
        #[arg(long)]
        entries: bool,
        /// Print JSON instead of lines.
        #[arg(long)]
        json: bool,
    },
    /// Write one conversation (--conversation ID) or all as JSON.
    Export {
        /// Only this conversation (its id from `enigma memory list`).
        #[arg(long)]
        conversation: Option<i64>,
        /// The file to write (atomically); standard output when left out.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// Add the conversations of an export file, under new ids.
    Import {
        /// A file written by `enigma memory export`.
        file: PathBuf,
    },
    /// Delete passages by id, or a conversation with --conversation.
    Forget {
        /// Ids of passages to delete (from `enigma memory search` or `list --entries`).
        ids: Vec<i64>,
        /// Delete this conversation and its messages instead.
        #[arg(long)]
        conversation: Option<i64>,
    },
}

/// The wanted modules, hosted; `memory` must be among them.
fn hosted(home: &Path) -> Result<ModuleManager> {
    let (m, _) = crate::modules::host(home)?;
    if m.get::<dyn VectorSearch>("vector_search").is_err() {
        bail!("the memory module is not loaded: `enigma modules load memory` (load embedding_local or embedding_api first to search by meaning)");
    }
    Ok(m)
}

pub fn main(cmd: MemoryCommand) -> Result<()> {
    main_in(&enigma_models::home(), cmd)
}

fn print_passages(found: &[Passage], json: bool, scores: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(found)?);
        return Ok(());
    }
    for p in found {
        let text = p.text.replace('\n', " ");
        if scores {
            println!("#{} {:.3} [{}] {text}", p.id, p.score, p.source);
        } else {
            println!("#{} [{}] {text}", p.id, p.source);
        }
    }
    Ok(())
}

pub fn main_in(home: &Path, cmd: MemoryCommand) -> Result<()> {
    let m = hosted(home)?;
    let search = m.get::<dyn VectorSearch>("vector_search")?;
    let conv = m.get::<dyn ConversationStorage>("conversation_storage")?;
    match cmd {
        MemoryCommand::Add { texts, source } => {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            let ids = search.add(&refs, &source)?;
            for (id, t) in ids.iter().zip(&texts) {
                println!("added #{id}: {}", t.replace('\n', " "));
            }
        }
        MemoryCommand::Search { query, top, json } => {
            print_passages(&search.search(&query, top)?, json, true)?;
        }
        MemoryCommand::List {
            entries: true,
            json,
        } => {
            print_passages(&search.list()?, json, false)?;
        }
        MemoryCommand::List {
            entries: false,
            json,
        } => {
            let list = conv.list()?;
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                for c in &list {
                    println!("{} {:?}: {} messages", c.id, c.title, c.messages);
                }
                eprintln!("{} conversations", list.len());
            }
        }
        MemoryCommand::Export {
            conversation,
            output,
        } => {
            let text = serde_json::to_string_pretty(&conv.export(conversation)?)?;
            match output {
                Some(path) => enigma_runtime::fsutil::atomic_write(&path, text.as_bytes())
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => println!("{text}"),
            }
        }
        MemoryCommand::Import { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("cannot read {}", file.display()))?;
            let ids = conv
                .import(&text)
                .with_context(|| format!("{}", file.display()))?;
            println!("imported {} conversations: {ids:?}", ids.len());
        }
        MemoryCommand::Forget { ids, conversation } => {
            if ids.is_empty() && conversation.is_none() {
                bail!("name passages to forget by id, or a conversation with --conversation ID");
            }
            if let Some(c) = conversation {
                conv.delete(c)?;
                println!("forgot conversation {c}");
            }
            if !ids.is_empty() {
                search.forget(&ids)?;
                println!("forgot {} passages", ids.len());
            }
        }
    }
    Ok(())
}

/// What `enigma chat --memory` keeps for the session: the hosted modules, the conversation it saves into.
pub struct ChatMemory {
    _manager: ModuleManager,
    search: Arc<dyn VectorSearch>,
    conv: Arc<dyn ConversationStorage>,
    conversation: Option<i64>,
    top: usize,
}

impl ChatMemory {
    /// The memory of the models home, for a chat taking `top` passages a turn.
    pub fn open(top: usize) -> Result<ChatMemory> {
        let m = hosted(&enigma_models::home())?;
        let search = m.get::<dyn VectorSearch>("vector_search")?;
        let conv = m.get::<dyn ConversationStorage>("conversation_storage")?;
        eprintln!("memory: {}", search.describe());
        Ok(ChatMemory {
            _manager: m,
            search,
            conv,
            conversation: None,
            top,
        })
    }

    /// The user's turn with the passages nearest it placed before it, and a line on stderr saying which.
    pub fn recall(&self, text: &str) -> Result<String> {
        let found = self.search.search(text, self.top)?;
        if found.is_empty() {
            eprintln!("(memory: nothing stored yet)");
            return Ok(text.to_string());
        }
        let which: Vec<String> = found
            .iter()
            .map(|p| format!("#{} ({:.2})", p.id, p.score))
            .collect();
        eprintln!("(memory: {})", which.join(", "));
        Ok(with_passages(text, &found))
    }

    /// Saves a turn (the user's own words, without the passages) in the chat's conversation.
    pub fn save(&mut self, user: &str, reply: &str) -> Result<()> {
        let c = match self.conversation {
            Some(c) => c,
            None => {
                let title: String = user.chars().take(60).collect();
                let c = self.conv.create(&title)?;
                eprintln!("(memory: saving this chat as conversation {c})");
                self.conversation = Some(c);
                c
            }
        };
        self.conv.append(c, &ChatMessage::user(user))?;
        self.conv.append(c, &ChatMessage::assistant(reply))?;
        Ok(())
    }
}

/// The prompt of one turn: the passages as notes, then the question.
pub fn with_passages(text: &str, found: &[Passage]) -> String {
    let mut out = String::from("Notes from memory that may help:\n");
    for p in found {
        out.push_str(&format!("- {}\n", p.text.replace('\n', " ")));
    }
    out.push('\n');
    out.push_str(text);
    out
}
