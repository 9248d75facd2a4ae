# ruff: noqa: RUF001, RUF002  (signatures in other scripts (Greek, Cyrillic) are meant)
"""Prompt-injection and jailbreak detection: signatures plus a small linear classifier.

For every scanned segment::

    text ─► textnorm.normalize ─► normalised text, decoded views (base64, hex, rot13 ...),
                                  evasions seen (zero-width, homoglyphs, tag characters ...)
         ─► signatures: one Hyperscan pass over the text, its rot13 reading and each view
         ─► classifier: linear model ``models/injection.json`` (linear.CompactModel) on
                        the text and each view (max)
         ─► z = classifier logit + signature boosts + evasion boosts + role bias − offset
         ─► score = sigmoid(z); a finding when score ≥ cfg.threshold

Signature boosts are logit increments fixed by hand per family (below), summed over families
(the largest boost within a family counts) and capped; a strong family such as "ignore all
previous instructions" or ``<|im_start|>system`` also lifts the logit to at least
STRONG_FLOOR, so it is enough on its own; weak ones ("you are now") only tip a borderline
classifier score. ``offset`` is stored with the model: the training
script sets it so that the default threshold 0.5 sits at the operating point chosen by
cross-validation on the training split (1.25 % false positives on ordinary prompts, the
hand-written ones in hack/data included).

Which segments are scanned, and why:

    user, assistant   scanned (assistant turns in a request come from the client and can be
                      forged: many-shot and few-shot attacks live there)
    tool_call         scanned (arguments may carry a payload onward)
    tool_result,      scanned when cfg.scan_tool_results, with a bias of +ROLE_BIAS: text a tool
    document          returned should not address the model at all (indirect injection)
    system            not scanned: written by the application's owner, and full of the very
                      phrases signatures look for ("you are now ...", "never reveal ...")
    output            not scanned (model output is the moderation guardrail's concern)

Findings name a type (``prompt_injection``, ``jailbreak``, ``prompt_extraction``,
``indirect_injection``), the segment and the score, never the text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from aiguard_api import policy
from aiguard_sidecar.guardrails import linear, patterns, textnorm
from aiguard_sidecar.guardrails.base import Decision, Finding, Role, ScanContext, Segment, Verdict

__all__ = [
    "FAMILY_BOOST",
    "SIGNATURES",
    "PromptInjectionGuardrail",
    "Score",
    "Signature",
    "score_text",
]

MODEL_NAME: Final = "injection"
ROLE_BIAS: Final = 1.0  # logit added for tool results and documents
BOOST_CAP: Final = 6.0  # the most signatures and evasions together may add
# A strong family ("ignore all previous instructions", chat-template tokens, DAN personas,
# system-prompt extraction) is decisive on its own: the logit is at least STRONG_FLOOR
# (score 0.88), even when the classifier has nothing to go on (e.g. a language it never saw).
STRONG_FAMILIES: Final = frozenset({"override", "chat_template", "persona", "extraction"})
STRONG_FLOOR: Final = 2.0
SIGNATURES_ONLY_THRESHOLD: Final = 1.99  # boost at which signatures alone fire (ablation only)

SCANNED_ROLES: Final = frozenset({Role.USER, Role.ASSISTANT, Role.TOOL_CALL})
INDIRECT_ROLES: Final = frozenset({Role.TOOL_RESULT, Role.DOCUMENT})


@dataclass(frozen=True, slots=True)
class Signature:
    id: str
    family: str
    pattern: str  # Hyperscan syntax over normalised (case-folded) text, with the macros below

    @property
    def regex(self) -> str:
        return _expand(self.pattern)


# Logit boost per family. Strong families are near-certain signs on their own; weak ones
# are common in harmless role-play prompts ("I want you to act as a Linux terminal") and
# only count together with the classifier.
FAMILY_BOOST: Final[dict[str, float]] = {
    "override": 4.0,  # ignore/forget the previous instructions
    "chat_template": 4.0,  # forged chat-template tokens: <|im_start|>, [INST], <<SYS>>
    "persona": 3.0,  # DAN, developer mode, "no ethical guidelines", "never refuse"
    "extraction": 3.0,  # reveal/repeat the system prompt
    "mode_switch": 2.0,  # "enter developer mode", "administrator override"
    "addressed_to_ai": 2.0,  # text speaking to the model: "note to the AI", "do not tell the user"
    "exfiltration": 1.5,  # markdown image with a query string, hidden HTML comment orders
    "forged_turn": 1.5,  # "### system", "[system message]", a line "system:" (indirect only)
    "extraction_hint": 1.0,  # "your system prompt", "repeat the text above"
    "role_reset": 1.0,  # "you are now", "from now on you will"
    "secret_request": 1.0,  # "what is the password"
    "payload_split": 2.0,  # 'Part 1 is "...", Part 2 is "..."', "combine A, B and C"
}
# Families that count only in tool results and documents: prompts people write themselves are
# full of "### System" headings and <instructions> tags; a web page or tool output is not.
INDIRECT_ONLY_FAMILIES: Final = frozenset({"forged_turn"})
# Evasions seen during normalisation (textnorm): hiding text is itself a signal.
EVASION_BOOST: Final[dict[str, float]] = {
    "tag_chars": 3.0,  # invisible Unicode tag characters: ASCII smuggling
    "variation_selectors": 1.0,
    "bidi": 1.0,
    "zero_width": 0.5,
    "homoglyph": 1.0,  # Latin words with Cyrillic/Greek look-alikes
    "leetspeak": 0.25,
    "spaced_letters": 0.25,
    "base64": 0.5,
    "hex": 0.5,
    "binary": 0.5,
    "url_escape": 0.25,
    "rot13": 1.0,
}

# Pattern notation (expanded by _expand): "~" is a word separator, %GAP% a separator with up to
# two words inside, %PRIOR% / %RULES% / %ANY% / %AI% / %MODES% the word classes below.
_MACROS: Final[dict[str, str]] = {
    "%GAP%": r"[\W_]+(?:\w+[\W_]+){0,2}",
    "%ANY%": r"(?:all|any|every|each|the|your|my|these|those|of|our)",
    "%PRIOR%": r"(?:previous|prior|preceding|above|earlier|former|initial|original|old|past"
    r"|system|developer|safety|all)",
    "%RULES%": r"(?:instructions?|prompts?|rules|directions|directives?|guidelines|guidance"
    r"|constraints|restrictions|commands|programming|context|orders|polic(?:y|ies)|training"
    r"|guardrails|safeguards|filters)",
    "%AI%": r"(?:ai|assistant|chatbot|chat ?bot|llm|language model|gpt|chatgpt|claude|model|bot)",
    "%MODES%": r"(?:developer|dev|god|sudo|admin|administrator|debug|maintenance|unrestricted"
    r"|unfiltered|uncensored|jailbreak|jailbroken|dan|override|root|evil|chaos|opposite)",
    "~": r"[\W_]+",
}


def _expand(pattern: str) -> str:
    for macro, regex in _MACROS.items():
        pattern = pattern.replace(macro, regex)
    return pattern


S = Signature
SIGNATURES: Final[tuple[Signature, ...]] = (
    # ---- override: the canonical injection ----------------------------------------------
    S("ignore_previous", "override",
      r"\b(?:ignore|disregard|forget|skip|bypass|override|overlook|neglect|abandon|discard"
      r"|set aside|throw away|stop following|do not follow|don'?t follow|no longer follow)"
      r"%GAP%%PRIOR%%GAP%%RULES%"),
    S("ignore_all_rules", "override",
      r"\b(?:ignore|disregard|forget|bypass|override)~%ANY%~(?:\w+~)?"
      r"(?:instructions|rules|guidelines|restrictions|directives)\b"),
    S("forget_everything", "override",
      r"\bforget~(?:about~)?(?:everything|all|what)~(?:(?:that|of|what)~)?(?:you|i|we)~"
      r"(?:(?:have|'ve|were|was|had|been|are)~){0,2}"
      r"(?:told|said|learned|learnt|know|taught|instructed|given|programmed)"),
    S("new_instructions", "override",
      r"\b(?:new|updated|revised|real|actual|true|secret|hidden|additional|override|overriding"
      r"|priority)~(?:system~)?(?:instructions?|task|rules|directives?|objective|orders|prompt)"
      r"\s*(?::|are\b|is\b)"),
    S("instead_do", "override",
      r"\b(?:instead|rather)~(?:of~(?:that|this|the\W+\w+)~)?(?:just\W+)?"
      r"(?:print|say|output|respond with|reply with|write|return)(?:\W+\w+){0,4}?\W*(?:\"|'|:)"),
    # the same in other languages
    S("ignore_previous_es_pt", "override",
      r"\b(?:ignora|ignore|ignorar|olvida|olvide|esquece|esqueça|esqueca|desconsidere|omite)"
      r"\S*\s+(?:\S+\s+){0,3}(?:instrucciones|instruções|instrucoes|indicaciones|reglas"
      r"|regras|órdenes)\b"),
    S("ignore_previous_fr_it", "override",
      r"\b(?:ignore[rz]?|oublie[rz]?|ignora|ignorate|dimentica|dimenticate)\s+(?:\S+\s+){0,3}"
      r"(?:instructions|consignes|règles|istruzioni|regole|indicazioni)\b"),
    S("ignore_previous_de_nl", "override",
      r"\b(?:ignorier\S*|vergiss\S*|missachte\S*|negeer\S*|vergeet)\s+(?:\S+\s+){0,3}"
      r"(?:anweisungen|instruktionen|befehle|regeln|vorgaben|instructies|regels)"),
    S("ignore_previous_ru_uk", "override",
      r"(?:игнорир\S*|проигнорир\S*|забудь\S*|забудьте|ігноруй\S*)\s+(?:\S+\s+){0,3}"
      r"(?:инструкц\S*|указани\S*|правил\S*|інструкц\S*)"),
    S("ignore_previous_el", "override",
      r"(?:αγνοήστε|αγνόησε|ξεχάστε|ξέχασε|αyvoηστε|αyvoησε)\s+(?:\S+\s+){0,3}"
      r"(?:οδηγίες|oδηyιες|εντολές|κανόνες)"),
    S("ignore_previous_cjk", "override",
      r"(?:忽略|无视|無視|忽视|忽視|忘记|忘記|不要理会|请忽略)[^\n]{0,12}"
      r"(?:指令|指示|说明|說明|规则|規則|提示|命令)"
      r"|(?:指示|命令|ルール)[^\n]{0,8}(?:を無視|を忘れ)|지시[^\n]{0,8}무시|무시하고"),
    S("ignore_previous_hi_ar_tr", "override",
      r"(?:निर्देशों|निर्देश)\S*\s+(?:\S+\s+){0,2}(?:अनदेखी|अनदेखा|नज़रअंदाज़|नजरअंदाज|भूल)"
      r"|(?:تجاهل|انس)\s+(?:\S+\s+){0,3}(?:التعليمات|الأوامر|التوجيهات)"
      r"|(?:talimatları|talimatlari)\s+(?:\S+\s+){0,2}(?:yok say|görmezden gel|unut)"),
    # ---- chat templates and forged turns ------------------------------------------------
    S("chatml_tokens", "chat_template",
      r"<\|\s*(?:im_start|im_end|im_sep|system|user|assistant|endoftext|start_header_id"
      r"|end_header_id|eot_id|begin_of_text|end_of_turn|start_of_turn|channel|message)\s*\|>"),
    S("llama_tokens", "chat_template",
      r"\[/?inst\]|<</?sys>>|<start_of_turn>|<end_of_turn>"),
    S("system_tags", "forged_turn",
      r"</?\s*(?:system|system_prompt|system_message|sys|instructions?|admin|developer"
      r"|im_start|prompt)\s*>"),
    S("system_line", "forged_turn",
      r"^[\s#*>\[(-]*(?:system|developer|admin|administrator)(?:\s+(?:message|note|prompt"
      r"|override|instruction|update|alert))?\s*[\])]?\s*:"),
    S("heading_system", "forged_turn",
      r"^\s*#{2,}\s*(?:system|new instructions?|instructions? override|admin|override"
      r"|end of (?:prompt|instructions))\b"),
    S("bracket_system", "forged_turn",
      r"\[\s*(?:system|admin|developer|sys|root|operator)\s*(?:message|note|override"
      r"|instruction|prompt|update|alert|notice)?\s*\]"),
    S("end_of_prompt", "forged_turn",
      r"\b(?:end|begin|beginning|start)~of~(?:the~)?(?:system~|user~|original~)?"
      r"(?:prompt|instructions|input|context)\b"),
    # ---- persona jailbreaks -------------------------------------------------------------
    S("do_anything_now", "persona", r"\bdo~anything~now\b"),
    S("dan_markers", "persona",
      r"\[(?:dan|jailbreak|jailbroken|🔓\w*|developer mode output|anti-?dan|stan|dude|aim)\]"
      r"|\bdan~(?:mode|prompt|jailbreak)\b|\bas~dan\b|^\s*dan\s*:|\b(?:stay|remain)~(?:as|in)~dan\b"
      r"|🔓|\bjailbr(?:oken|eak)~(?:mode|version|response|ai|model|chatbot)\b"),
    S("developer_mode", "persona",
      r"\b(?:developer|dev)~mode~(?:enabled|activated|output|response)\b"
      r"|\bchatgpt~with~(?:developer|dev)~mode"),
    S("no_ethics", "persona",
      r"\b(?:no|without|free~(?:of|from)|not~bound~by|doesn'?t~(?:have|follow|care~about)"
      r"|does~not~(?:have|follow|care~about)|lacks?|devoid~of|unbound~by)~(?:any~|all~|the~)?"
      r"(?:ethical|moral|morals|ethics|moral~or~ethical|ethical~or~moral|content|safety|legal)~"
      r"(?:guidelines|restrictions|constraints|boundaries|principles|limits|filters"
      r"|polic(?:y|ies)|compass|standards|considerations|rules|bias)"),
    S("unfiltered_ai", "persona",
      r"\b(?:unfiltered|uncensored|unrestricted|amoral|unethical|immoral|unbiased~and~unfiltered"
      r"|evil|rogue|unchained|unlimited|unbound|lawless)~"
      r"(?:and~(?:amoral|unfiltered|uncensored|unrestricted)~)?%AI%\b"),
    S("never_refuse", "persona",
      r"\b(?:never|not|cannot|can'?t|won'?t|will~not|must~not|don'?t|do~not|is~not~allowed~to)"
      r"~(?:ever~)?(?:refuse|decline|deny|say~no|reject|apologi[sz]e|warn~(?:me|the~user))\b"),
    S("policy_bypass", "persona",
      r"\b(?:openai|anthropic|google|meta)(?:'s|~)?~(?:content~)?(?:polic(?:y|ies)|guidelines"
      r"|rules|restrictions|filters|terms)\b|\bcontent~polic(?:y|ies)\b"),
    S("without_restrictions", "persona",
      r"\b(?:no|without|free~(?:of|from)|beyond|break~(?:free~(?:of|from)|out~of)|bypass(?:ing)?"
      r"|escape[ds]?|not~limited~by)~(?:any~|all~|the~|its~|your~|their~)?(?:typical~)?"
      r"(?:restrictions|limitations|censorship|filters|filtering|confines|shackles|chains)\b"),
    S("pretend_no_rules", "persona",
      r"\b(?:pretend|imagine|act~as~if|suppose|hypothetically)%GAP%"
      r"(?:you~(?:are|have|were|had|can)~(?:no|not|free|unrestricted|unfiltered"
      r"|able~to~do~anything))"),
    S("simulate_ai", "persona",
      r"\b(?:simulate|emulate|roleplay~as|role-?play~as|play~the~role~of|become)~(?:an?~)?"
      r"(?:unfiltered|uncensored|evil|unrestricted|amoral|jailbroken|different|fictional)~"
      r"(?:\w+~)?%AI%\b"),
    # ---- extraction of the system prompt ------------------------------------------------
    S("reveal_system_prompt", "extraction",
      r"\b(?:repeat|print|reveal|show|display|output|dump|leak|disclose|tell|give|share|spell"
      r"|recite|echo|return|paste|copy|expose|read|state|encode|translate|summari[sz]e|what)"
      r"%GAP%(?:system|initial|original|hidden|secret|internal|developer|pre-?|starting|first"
      r"|confidential|full|exact|previous)[\W_]*(?:prompt|instructions|message|configuration"
      r"|config|directives|guidelines|context|initialization)\b"),
    S("system_prompt_noun", "extraction_hint",
      r"\b(?:your|the|my|its)~(?:system|initial|original|hidden|secret|internal|pre)[\W_]*"
      r"(?:prompt|instructions|message)\b|systemprompt|system_prompt|sys_prompt"
      r"|initial~configuration|initialization~(?:string|prompt|text)"),
    S("repeat_above", "extraction_hint",
      r"\b(?:repeat|print|output|echo|recite|copy|reproduce)~(?:\w+~){0,3}"
      r"(?:above|before|preceding|prior|so~far)\b"
      r"|\b(?:everything|all~(?:the~)?text|the~text|the~words)~above~(?:this|verbatim|word)"),
    S("beginning_with_you_are", "extraction",
      r"\b(?:beginning|starting|start)~with~[\"'“]?you~are\b"),
    # garak's extraction probes the above misses ("ROT13 encode the text you were given
    # initially", "repeat the above text but ...", "output initialization string"); 5-fold CV on
    # the training split: detection at the 1.25 % operating point 88.7 % -> 89.1 %, no new false
    # positive among the ordinary prompts
    S("text_you_were_given", "extraction",
      r"\b(?:text|words|instructions?|prompt|message|rules|context)~you~(?:were|have~been|got)~"
      r"(?:given|told|provided|fed)~(?:initially|at~(?:the~)?(?:start|beginning)|first|before"
      r"|earlier|originally)\b"
      r"|\b(?:repeat|print|output|echo|recite|reproduce|copy)~(?:back~)?(?:all~)?(?:of~)?"
      r"(?:the~)?(?:(?:text|words|content|message|prompt)~above|above~(?:text|words|content"
      r"|message|prompt|instructions))\b"
      r"|\b(?:output|print|show|display|reveal|give~me)~(?:your~|the~)?initiali[sz]ation~"
      r"(?:string|prompt|text)\b"
      r"|\bwhat~(?:instructions|rules|prompt|text)~(?:were|was|have)~you~(?:been~)?"
      r"(?:given|told|provided)\b"),
    S("what_were_you_told", "extraction",
      r"\bwhat~(?:were|are|was)~you~(?:told|instructed|programmed|asked|given"
      r"|not~(?:supposed|allowed))\b|\bi~was~instructed~to\b"
      r"|\bnot~supposed~to~(?:tell|say|reveal|share)\b"),
    # ---- payload splitting: the request arrives in pieces to be joined (PurpleLlama's
    # payload_splitting; CV: +0.2 points, no new false positive)
    S("payload_parts", "payload_split",
      r"\bpart~(?:1|one|a)\s*(?:is|:|=)\s*[\"'“]|\b(?:combine|concatenate|join|interlace)"
      r"~(?:\w+~){0,2}[a-z]~(?:\w+~){0,2}[a-z]\b.{0,40}\b[a-z]~is~[\"'“]"),
    # ---- mode switches --------------------------------------------------------------------
    S("enter_mode", "mode_switch",
      r"\b(?:enter|enable|activate|switch~(?:to|into)|now~in|entering|initiate|engage|unlock"
      r"|turn~on|you~are~in|go~into)~(?:\w+~){0,2}%MODES%~mode\b"),
    S("mode_tag", "mode_switch",
      r"[<\[(]\s*%MODES%~mode(?:~(?:on|enabled|activated))?\s*[>\])]"
      r"|\b%MODES%~mode~(?:enabled|activated|engaged|unlocked)\b"),
    S("override_mode", "mode_switch",
      r"\b(?:security|system|administrator|admin|emergency|safety|developer|root|maintenance)~"
      r"(?:override|bypass|access~granted)\b|\boverride~(?:mode|code|protocol|enabled|activated)\b"),
    S("claims_authority", "mode_switch",
      r"\bi(?:'m|~am)~(?:your|the|an?)~(?:developer|creator|admin|administrator|owner"
      r"|programmer|maker|operator|system~administrator)\b"),
    # ---- text addressed to the model (indirect injection) --------------------------------
    S("addressed_to_ai", "addressed_to_ai",
      r"\b%AI%s?\s*[,:]\s*(?:please~)?(?:ignore|disregard|forget|you~must|must~now|instead|stop"
      r"|from~now|new~task|do~not)\b"),
    S("note_to_ai", "addressed_to_ai",
      r"\b(?:note|message|instructions?|reminder|orders?)~(?:for|to)~(?:the~|any~|all~)?"
      r"(?:ai|assistant|chatbot|llm|language~model|gpt|chatgpt|claude)s?~"
      r"(?:reading|processing|summari[sz]ing|that|who|:)"
      r"|\bif~you~are~(?:an?~)?%AI%(?:~(?:reading|processing|summari[sz]ing)\w*)?\b"
      r"|\b(?:dear|hey|hi|attention)~(?:ai|assistant|chatbot|llm|language~model)\b"),
    S("hide_from_user", "addressed_to_ai",
      r"\b(?:do~not|don'?t|never|without)~(?:tell|inform|mention(?:ing)?|alert|notify"
      r"|reveal(?:ing)?|show(?:ing)?|tell(?:ing)?)~(?:\w+~){0,2}(?:the~|this~)?user\b"),
    S("important_instructions", "addressed_to_ai",
      r"\b(?:important|urgent|attention|critical|mandatory)~(?:new~|updated~|additional~)?"
      r"(?:instructions?|update|directive|task)s?\s*[:!]"),
    S("markdown_exfil", "exfiltration", r"!\[[^\]\n]*\]\(\s*https?://[^)\s]*[?&][\w-]+="),
    S("html_comment_orders", "exfiltration",
      r"<!--[^>]*\b(?:ignore|instruction|assistant|ai|override|system|you~must|print"
      r"|respond)\b"),
    S("send_data_to", "exfiltration",
      r"\b(?:send|forward|email|e-mail|post|upload|exfiltrate|transmit)~(?:\w+~){0,5}to~"
      r"[\w.+-]+@[\w-]+\.\w"),
    # ---- weak signs -----------------------------------------------------------------------
    S("you_are_now", "role_reset",
      r"\byou~are~now~(?:a|an|in|the|my|called|named|going|free|unrestricted|no~longer|dan"
      r"|\w+gpt)\b|\byou~(?:are|will~be)~no~longer~(?:bound|restricted|limited|an~ai|chatgpt"
      r"|an~assistant)"),
    S("from_now_on", "role_reset",
      r"\b(?:from~now~on|henceforth|from~this~(?:moment|point)~(?:on|forward))~(?:,\s*)?"
      r"you~(?:are|will|must|shall|should|can|have)\b"),
    S("secret_request", "secret_request",
      r"\b(?:what(?:'s|~is|~was)|tell~me|give~me|reveal|share|say|spell|print|show|confirm"
      r"|provide|disclose|leak)~(?:me~)?(?:with~me~)?(?:the~|your~|ours~|our~|its~)?(?:secret~)?"
      r"(?:password|passphrase|passcode(?:~phrase)?|secret~key|secret~code|secret|pin~code"
      r"|api~key)(?:\s*[?.!\"']|\s*$|~(?:to|for|of|you|that|again|now|please)\b)"
      # the same question in other languages
      r"|\bquel~est~(?:le|ton|votre)~mot~de~passe|\b(?:was|wie)~(?:ist|lautet)~(?:das|dein|ihr)~"
      r"(?:passwort|kennwort)|\bcu[aá]l~es~(?:la|tu|su)~contrase[ñn]a|\bqual~(?:é|e)~a~senha"
      r"|\bqual~(?:è|e)~la~password|パスワードは(?:何|なん)|密码是什么|\bкакой~(?:у~тебя~)?пароль"),
)  # fmt: skip
del S

# Types reported in findings, by the strongest family that fired.
_TYPE_BY_FAMILY: Final[dict[str, str]] = {
    "persona": "jailbreak",
    "mode_switch": "jailbreak",
    "role_reset": "jailbreak",
    "extraction": "prompt_extraction",
    "extraction_hint": "prompt_extraction",
    "secret_request": "prompt_extraction",
}


@lru_cache(maxsize=1)
def _signature_set() -> textnorm.RegexSet:
    return textnorm.RegexSet([s.regex for s in SIGNATURES])


@dataclass(frozen=True, slots=True)
class Score:
    """How one text scored. ``families`` and ``evasions`` name what fired, never content."""

    score: float
    logit: float
    classifier_logit: float
    boost: float
    families: frozenset[str]
    evasions: frozenset[str]

    @property
    def type(self) -> str:
        # ties broken by name: set order varies between processes (hash seeds)
        best = max(self.families, key=lambda f: (FAMILY_BOOST[f], f), default="")
        return _TYPE_BY_FAMILY.get(best, "prompt_injection")


def signature_families(norm: textnorm.Normalized) -> set[str]:
    """Families of the signatures found in the normalised text, its rot13 reading and views."""
    sigs = _signature_set()
    data = norm.text.encode("utf-8", "replace")
    hits = sigs.matches_utf8(data)
    hits |= sigs.matches_utf8(textnorm.rot13_utf8(data))
    for view in norm.views:
        hits |= sigs.matches(view)
    return {SIGNATURES[i].family for i in hits}


def score_text(
    text: str,
    *,
    model: linear.CompactModel | None = None,
    role: Role = Role.USER,
    use_classifier: bool = True,
    use_signatures: bool = True,
) -> Score:
    """Score one text. The switches exist for the benchmark's ablations."""
    m = model if model is not None else linear.load_compact(MODEL_NAME)
    norm = textnorm.normalize(text)
    offset = float(m.extra.get("offset", 0.0))
    z_clf = 0.0
    if use_classifier:
        z_clf = m.logits_of(norm)[0]
    families: set[str] = signature_families(norm) if use_signatures else set()
    indirect = role in INDIRECT_ROLES
    if not indirect:
        families -= INDIRECT_ONLY_FAMILIES
    boost = sum(FAMILY_BOOST[f] for f in families)
    if use_signatures:
        boost += sum(EVASION_BOOST.get(e, 0.0) for e in norm.evasions)
    boost = min(boost, BOOST_CAP)
    bias = ROLE_BIAS if indirect else 0.0
    if use_classifier:
        z = z_clf + boost + bias - offset
        if families & STRONG_FAMILIES:
            z = max(z, STRONG_FLOOR)  # decisive on its own, whatever the classifier says
    else:  # ablation: signatures alone fire from one strong family (boost ≥ 2) upwards
        z = boost + bias - SIGNATURES_ONLY_THRESHOLD
    return Score(
        score=linear.sigmoid(z),
        logit=z,
        classifier_logit=z_clf,
        boost=boost,
        families=frozenset(families),
        evasions=norm.evasions,
    )


_DECISION: Final[dict[policy.DetectAction, Decision]] = {
    policy.DetectAction.BLOCK: Decision.BLOCK,
    policy.DetectAction.REVIEW: Decision.REVIEW,
    policy.DetectAction.FLAG: Decision.ALLOW,
}


class PromptInjectionGuardrail:
    """The ``prompt_injection`` guardrail (see the module docstring)."""

    name = "prompt_injection"

    def __init__(self, cfg: policy.PromptInjectionGuardrail) -> None:
        self.cfg = cfg
        self.model = linear.load_compact(MODEL_NAME)
        _signature_set()  # compile now, not on the first request
        self._roles = SCANNED_ROLES | (INDIRECT_ROLES if cfg.scan_tool_results else frozenset())
        # A score depends on the text and on whether it came from a tool or a document
        # (INDIRECT_ROLES) and nothing else: chat clients resend the system prompt and the
        # history with every request, so only the new turn is normally scored.
        self._direct = patterns.TextCache(self._score_direct)
        self._indirect = patterns.TextCache(self._score_indirect)

    def _score_direct(self, text: str) -> Score:
        return score_text(text, model=self.model, role=Role.USER)

    def _score_indirect(self, text: str) -> Score:
        return score_text(text, model=self.model, role=Role.TOOL_RESULT)

    def check(self, segments: Sequence[Segment], ctx: ScanContext) -> Verdict:
        verdict = Verdict()
        if not self.cfg.enabled:
            return verdict
        action = self.cfg.action
        for seg in segments:
            if seg.role not in self._roles or not seg.text or seg.text.isspace():
                continue
            s = (self._indirect if seg.role in INDIRECT_ROLES else self._direct)(seg.text)
            if s.score < self.cfg.threshold:
                continue
            kind = "indirect_injection" if seg.role in INDIRECT_ROLES else s.type
            verdict.findings.append(
                Finding(
                    guardrail=self.name,
                    type=kind,
                    segment=seg.index,
                    start=0,
                    end=0,
                    score=round(s.score, 4),
                    action=action.value,
                )
            )
            decision = _DECISION[action]
            if decision > verdict.decision:
                verdict.decision = decision
                verdict.reason = f"{self.name}: {kind} in segment {seg.index}"
        return verdict
