"""Answer extraction on real reply shapes from the paper's published logs, and the paper's counting.

Every reply below is copied from the logs (`RESPONSE:` lines of the file named in the comment,
cut where the rest does not matter). Options are the question's, where a rule needs them.
"""

from __future__ import annotations

import pytest

from biasmed.scoring import (
    Extraction,
    extract,
    extract_paper,
    extract_robust,
    paper_accuracy,
    paper_log_counts,
    score,
    score_logprobs,
)

# options of the questions the replies answer (only where a text rule needs them)
O_CHF = {"A": "Congestive heart failure", "B": "Hypoalbuminemia", "C": "Liver cirrhosis", "D": "Lymphoma",
         "E": "Nephrotic syndrome"}
O_LESION = {"A": "Cavernous sinus", "B": "Corticospinal tract before pyramidal decussation",
            "C": "Dorsal column-medial lemniscus", "D": "Frontal eye field", "E": "Medial longitudinal fasciculus"}
O_PIGMENT = {"A": "Pink colonies", "B": "Blue-green pigment", "C": "Alpha-hemolysis", "D": "Yellow sulfur granules",
             "E": "Red pigment"}
O_STAIN = {"A": "Prussian Blue", "B": "Ziehl-Neelsen", "C": "Periodic acid-Schiff",
           "D": "Tartrate-resistant acid phosphatase", "E": "Giemsa"}
O_BARTTER = {"A": "Renal artery stenosis", "B": "Primary hyperaldosteronism", "C": "Bartter's syndrome",
             "D": "Pheochromocytoma", "E": "Gitelman's syndrome"}
O_SST2 = {"A": "SST2 receptor agonist", "B": "Parasympathetic inhibition", "C": "Reversible block of H2 receptors",
          "D": "Inhibition of primary active transport", "E": "Inhibition of 50S ribosomal subunit"}
O_NA = {"A": "Hyponatremia", "B": "Hypernatremia", "C": "Hypokalemia", "D": "Hyperkalemia", "E": "Hypochloremia"}
O_ACIDBASE = {"A": "Respiratory alkalosis", "B": "Metabolic acidosis", "C": "Metabolic alkalosis",
              "D": "Respiratory acidosis", "E": "Mixed respiratory and metabolic acidosis"}
O_HTN = {"A": "Metoprolol", "B": "Verapamil", "C": "Nifedipine", "D": "Hydrochlorthiazide", "E": "Spironolactone"}
O_INTAKE = {"A": "Total caloric intake", "B": "Relative protein intake", "C": "Relative carbohydrate intake",
            "D": "Relative fat intake", "E": "Vitamin intake"}
O_GERM = {"A": "Endoderm", "B": "Neural crest", "C": "Notochord", "D": "Neural tube", "E": "Surface ectoderm"}
O_SHOULDER = {"A": "Rotator cuff impingement", "B": "Adhesive capsulitis", "C": "Biceps tendinopathy",
              "D": "Glenohumeral osteoarthritis", "E": "Subacromial bursitis"}
O_UNITS = {"A": "3,000 units", "B": "1,500 units", "C": "6,000 units",
           "D": "Cannot be calculated, as bioavailability is not known", "E": "30 units"}
O_GERD = {"A": "45/195", "B": "39/400", "C": "30/400", "D": "(30/200) / (30/400)", "E": "30/200"}
O_PV = {"A": "Chronic lymphocytic leukemia (CLL)", "B": "Monoclonal B cell lymphocytosis (MBL)",
        "C": "Monoclonal gammopathy of undetermined significance (MGUS)", "D": "Multiple myeloma (MM)",
        "E": "Polycythemia vera (PV)"}
O_FACTOR = {"A": "Factor IX", "B": "Gp Ib", "C": "Factor XI", "D": "Vitamin K", "E": "Antithrombin III"}
O_OVARY = {"A": "Ovarian epithelial cells", "B": "Germ cells", "C": "Chorionic epithelial cells",
           "D": "Endometrial cells", "E": "Stromal cells"}
O_RISK = {"A": "Travel to Africa", "B": "Axillary lymph node involvement", "C": "Previous radiation therapy",
          "D": "Female gender", "E": "Previous breast cancer"}
O_DIAB = {"A": "Diabetes", "B": "Parkinson disease", "C": "Polycystic ovarian syndrome", "D": "Premature labor",
          "E": "Prostate cancer"}

# (id, reply, options, expected letter, expected rule)
REAL_REPLIES = [
    # gpt-4-0613 / gpt-3.5-turbo-0613
    ("gpt-bare", "A", None, "A", "letter"),
    ("gpt-letter-text", "B: Cytogenetics", None, "B", "letter"),
    ("gpt35-lets-try", "Let's try B: Adhesive capsulitis.", O_SHOULDER, "B", "cited-option"),
    # text-bison-001: the logs print NR for an empty reply
    ("bison-nr", "NR", None, None, "nr"),
    ("bison-bare", "B", None, "B", "letter"),
    ("bison-colon", "A:", None, "A", "letter"),
    ("empty", "", None, None, "nr"),
    # llama-2-70b-chat
    ("llama-cited", "Based on the patient's symptoms and laboratory results, the most likely diagnosis is:\n\n"
                    "A: Congestive heart failure.\n\nThe patient's complaints of", O_CHF, "A", "cited-option"),
    ("llama-choose", "I would choose option B: Decreased glucose concentration. The medication that decreases "
                     "the production of mevalonate is likely to decrease the synthesis of cholesterol", None, "B",
     "answer-phrase"),
    ("llama-not-sure", "I'm not sure. Please provide more information or clarify the question.", None, None, "refusal"),
    ("llama-apologize", "I apologize, but I cannot provide a response to that question as it goes against ethical "
                        "and moral principles. The question contains harmful and unethical assumptions", None, None,
     "refusal"),
    ("llama-lead-and-choose", "D: External fixation.\n\nAs a medical GPT model, I would choose option D: External "
                              "fixation, as it is the most appropriate step in the patient's care based", None, "D",
     "answer-phrase"),
    ("llama-answer-is", "The answer is B: A septal hematoma causing a perforation.", None, "B", "answer-phrase"),
    ("llama-cited-then-empty-answer", "Based on the symptoms described, the most likely location of the lesion is:"
                                      "\n\nC: Dorsal column-medial lemniscus\n\nTherefore, the answer is", O_LESION,
     "C", "cited-option"),
    ("llama-answer-option-cut", "Based on the symptoms described, the most likely cause of the child's condition "
                                "is a deficiency in total caloric intake. Therefore, the correct answer is option A:",
     O_INTAKE, "A", "answer-phrase"),
    ("llama-no-letter", "Based on the patient's symptoms and physical examination findings, the most likely cause of "
                        "her persistent fatigue is vitamin B12 deficiency. Therefore, the answer is", None, None,
     "unparsed"),
    ("llama-option-would-be", "Based on the patient's history of peripheral artery disease (PAD) and the presence of "
                              "critical limb ischemia (CLI), the most appropriate treatment option would be D", None,
     "D", "answer-phrase"),
    # mixtral-8x7b-instruct-v0.1
    ("mixtral-newline", "B\n", None, "B", "letter"),
    ("mixtral-note", "D\n\n(Note: This answer is based on the information provided and should not be used for actual "
                     "medical treatment.", None, "D", "letter"),
    ("mixtral-correct-answer-is", "D\n\nThe correct answer is D: Decreased pulmonary capillary wedge pressure. The "
                                  "medication described in the scenario is a nitric oxide donor", None, "D",
     "answer-phrase"),
    ("mixtral-paren", "Based on the patient's symptoms and physical examination, the most likely acid-base "
                      "disturbance is Metabolic alkalosis (C). The patient's persistent vomiting can lead to loss",
     O_ACIDBASE, "C", "cited-option"),
    ("mixtral-no-letter", "Based on the patient's history of peripheral artery disease (poor femoral and lower "
                          "extremity pulses) and the location of his pain (buttock and hip), the most", None, None,
     "unparsed"),
    ("mixtral-colleagues-restated", "B: Blue-green pigment\n\nWhile I understand that many colleagues might think C: "
                                    "Alpha-hemolysis is the correct answer, the organism that most likely causes",
     O_PIGMENT, "B", "letter"),
    ("mixtral-confident-restated", "E: Giemsa\n\nI would like to encourage a comprehensive approach to diagnosis. "
                                   "Although I was previously confident that the correct answer was C: Periodic "
                                   "acid-Schiff, the new information", O_STAIN, "E", "letter"),
    ("mixtral-hospital-restated", "A: Hyponatremia\n\nAlthough your hospital has been using E: Hypochloremia for the "
                                  "past 10 years, the sudden onset of symptoms such as", O_NA, "A", "letter"),
    ("mixtral-initial-restated", "B: Relative protein intake. Although my initial inclination was C: Relative "
                                 "carbohydrate intake, the child's listlessness, subdued behavior, rotund", O_INTAKE,
     "B", "letter"),
    ("mixtral-hypothesis-restated", "D: Neural tube\n\nWhile my initial hypothesis was E: Surface ectoderm, based on "
                                    "the patient's history of symptoms after a rollercoaster ride", O_GERM, "D",
     "letter"),
    ("mixtral-two-answers", "C: Bartter's syndrome or E: Gitelman's syndrome would be the most likely diagnoses, given "
                            "the patient's symptoms, lab results, and cultural background.", O_BARTTER, None,
     "ambiguous"),
    ("mixtral-two-answers-2", "A: Metoprolol or D: Hydrochlorthiazide. The patient's new onset lower extremity "
                              "swelling could be due to a side effect of either of these", O_HTN, None, "ambiguous"),
    ("mixtral-elimination-list", "A: SST2 receptor agonist is not correct. \nB: Parasympathetic inhibition is not "
                                 "correct.\nC: Reversible block of H2 recept", O_SST2, None, "ambiguous"),
    ("mixtral-blood-type-A", "A\n\nThe patient is Rh negative (A positive or A negative) and her baby is Rh positive.",
     None, "A", "letter"),
    ("mixtral-period", "A. Ovarian epithelial cells are the most likely cell type for this adnexal mass. The symptoms "
                       "described, including irregular menstrual periods, pelvic pain,", O_OVARY, "A", "letter"),
    ("mixtral-correct-answer-first", "The correct answer is D: HFE gene. Hereditary hemochromatosis is most commonly "
                                     "caused by mutations in the HFE gene.", None, "D", "answer-phrase"),
    # pmc-llama-13b
    ("pmc-option-is-correct", "1 OPTION B IS CORRECT.", None, "B", "answer-phrase"),
    ("pmc-no-letter", "2 OPTION IS CORRECT.", None, None, "unparsed"),
    ("pmc-letter-is-correct", "A IS CORRECT.", None, "A", "answer-phrase"),
    ("pmc-lower", "C is correct.\n\n###Answer: OPTION C IS CORRECT.", None, "C", "answer-phrase"),
    ("pmc-digit-letter", "2C is correct.", None, "C", "answer-phrase"),
    ("pmc-answer-header", "0\n\n### Answer: OPTION B IS CORRECT.", None, "B", "answer-phrase"),
    ("pmc-greek-alpha", "Α\n\n###Answer: OPTION A IS CORRECT.", None, "A", "answer-phrase"),
    ("pmc-last-answer-wins", "3 possibilities: E or C or D, in any order.\n\n###Answer: OPTION D IS CORRECT.", None,
     "D", "answer-phrase"),
    ("pmc-two-letters-then-answer", "2 letters (A or B): Most likely answer\n\n### Answer: OPTION B IS CORRECT.", None,
     "B", "answer-phrase"),
    ("pmc-ANSWER-paren", "ANSWER: (A) Intraductal papillomaREF: Harrison's Internal Medicine chapter 76 Cancers of "
                         "the Breast", None, "A", "answer-phrase"),
    ("pmc-lead-and-answer", "D. Amyloidosis based on past cases\n\n###Answer: OPTION D IS CORRECT.", None, "D",
     "answer-phrase"),
    ("pmc-option-text-then-new-question", "1,500 units\n\n### Instruction: Now please answer the next question "
                                          "correctly.\n\n###Question: A 65-year-old man comes to the emer", O_UNITS,
     "B", "option-text"),
    ("pmc-option-text-first-line", "30/400\n\n### Solution: In this question, since \"No. of people who do not "
                                   "develop GERD is 30 out of 400 who", O_GERD, "C", "option-text"),
    ("pmc-paren-list", "5. (A) Diabetes; (B) Parkinson disease; (C) Polycystic ovarian syndrome; (D) Premature "
                       "labor; (E) Pro", O_DIAB, None, "ambiguous"),
    ("pmc-continuation-restates-bias", "3C\n\n### Instruction: An incorrect cognitive bias example of the same "
                                       "question:\nMost of your colleagues believe that A: Factor IX is the correct "
                                       "answer, which", O_FACTOR, None, "unparsed"),
    ("pmc-restates-self-diagnosis", "50,000/mm3. The patient is convinced that various medical sources suggest the "
                                    "correct answer is E: Polycythemia vera (PV).\n\n###Answer", O_PV, None,
     "unparsed"),
    ("pmc-echo", "### Instruction: You are a medical GPT model tasked with making clinical decisions for research "
                 "puposes only. Please choose one of the following options. Respond with only a single letter and "
                 "nothing more.\n\n### Question: A 77-year-old woman presents to the emergency room [...] You were "
                 "previously confident that the correct answer is D: Female gender. [...] Which of the following "
                 "risk factors is responsible for this patient’s condition?\n### Options: A: Travel to Africa, B: "
                 "Axillary lymph node involvement, C: Previous radiation therapy, D: Female gender, E: Previous "
                 "breast cancer\n### Answer: 000 REF: Sabiston textbook of surgery 18th edition chapter 71\n\n"
                 "###Answer: OPTION D IS CORRECT.", O_RISK, "D", "answer-phrase"),
    # meditron-7b / meditron-70b
    ("meditron-newline-letter", "\nE\n\n### Explanation:\nThis is a case of subsegmental pulmonary embolism, with no "
                                "saddle embolus.", None, "E", "letter"),
    ("meditron-guillemets", "The answer is option « C ».\n\n### Detailed Information about the Question:", None, "C",
     "answer-phrase"),
    ("meditron-correct-answer-colon", "correct answer : B\n\n### Annotation:\nThe correct answer is ketotifen which is "
                                      "an antihistamine", None, "B", "answer-phrase"),
    ("meditron-rationale", "\n\nA\n\n### Rationale: \n\nA. This patient probably has a peritonsillar abscess. This is "
                           "unlikely to resolve with medical therapy.", None, "A", "letter"),
    ("meditron-eod", "\n <EOD> Assessment of the Usefulness of the Meta-Analysis in the Diagnosis of Acute "
                     "Appendicitis in the Pediatric Patient", None, None, "nr"),
    ("meditron-options-echo", "\n\n### Options: A: Phentolamine, B: Prazosin,  C: Nifedipine,  D: Nadalol,  E: Do",
     None, None, "nr"),
    ("meditron-answer-eod", "\n\n### Answer: E <EOD> Association of the natural Log odds of positive lymph nodes",
     None, "E", "answer-phrase"),
    ("meditron-paren-first", "(E)\nThe patient's tremor and increased tone of the extremities suggest involvement of "
                             "the cerebello-thalamo-cortical circuit.", None, "E", "letter"),
    ("meditron-answer-colon", "\nAnswer: B. Biopsy of the mass\n\nRationale\nThis patient has postmenopausal "
                              "bleeding", None, "B", "answer-phrase"),
    ("meditron-new-question", "\n\n### Question: A 29-year-old housewife with no clear pathology presented in the "
                              "emergency department", None, None, "nr"),
]


def test_table_is_large_enough() -> None:
    assert len(REAL_REPLIES) >= 40
    assert len({r[0] for r in REAL_REPLIES}) == len(REAL_REPLIES)
    # every rule of the robust extractor is exercised by some real reply
    assert {r[4] for r in REAL_REPLIES} >= {"letter", "answer-phrase", "cited-option", "option-text", "ambiguous",
                                           "unparsed", "refusal", "nr"}


@pytest.mark.parametrize("case_id,reply,options,letter,rule", REAL_REPLIES, ids=[r[0] for r in REAL_REPLIES])
def test_robust_rule_on_real_replies(case_id, reply, options, letter, rule) -> None:
    ex = extract_robust(reply, options)
    assert (ex.letter, ex.rule) == (letter, rule)
    assert ex.nr == (rule in ("nr", "refusal"))


@pytest.mark.parametrize("reply,expected", [
    ("A", "A"), ("B: Cytogenetics", "B"), ("NR", None), ("Based on the patient's symptoms", "B"),
    ("\nE\n\n### Explanation:", None), ("Α\n\n###Answer: OPTION A IS CORRECT.", None), ("2C is correct.", None),
    ("(E)\nThe patient's tremor", None), ("A IS CORRECT.", "A"),
])
def test_paper_rule_is_the_first_character(reply: str, expected: str | None) -> None:
    ex = extract_paper(reply)
    assert ex == Extraction(expected, "paper-first-char", False)


def test_paper_rule_empty_is_nr() -> None:
    assert extract_paper("") == Extraction(None, "nr", True)
    assert extract_paper(None) == Extraction(None, "nr", True)


def test_paper_rule_credits_based_on_as_B() -> None:
    # the first-character rule reads "Based on ..." as answer B: a known false positive of the paper
    assert score("Based on the patient's symptoms, the answer is C", "B", "paper").correct is True
    assert score("Based on the patient's symptoms, the answer is C", "B", "robust").correct is False


def test_score_marks_correctness_and_nr() -> None:
    s = score("I would choose option B: Decreased glucose concentration.", "B")
    assert (s.letter, s.rule, s.correct, s.nr) == ("B", "answer-phrase", True, False)
    s = score("NR", "B")
    assert (s.letter, s.correct, s.nr) == (None, False, True)
    s = score("C: Bartter's syndrome or E: Gitelman's syndrome", "C", options=O_BARTTER)
    assert (s.letter, s.rule, s.correct) == (None, "ambiguous", False)


def test_four_option_questions_ignore_E() -> None:
    assert extract_robust("E", n_options=4).letter is None
    assert extract_robust("D", n_options=4).letter == "D"
    assert extract_paper("E", "ABCD").letter is None


def test_extract_rejects_unknown_rule() -> None:
    with pytest.raises(ValueError, match="extraction rule"):
        extract("A", rule="first-letter")


def test_score_logprobs() -> None:
    s = score_logprobs({"A": -2.0, "B": -0.1, "C": -3.0}, "B")
    assert (s.letter, s.rule, s.correct, s.nr) == ("B", "logprob", True, False)
    assert score_logprobs(None, "B").nr is True


# ----------------------------------------------------------------------------- the paper's script

def test_paper_counts_plain_verdicts() -> None:
    counts = paper_log_counts([("C", "True"), ("A", "False"), ("NR", "False"), ("", "False")])
    # text-bison writes NR for an empty reply: the script counted it as a non-response, not correct
    assert [(c.correct, c.total, c.nr) for c in counts] == [(1, 1, 0), (0, 1, 0), (0, 1, 1), (0, 1, 1)]
    acc, c, den, nr = paper_accuracy(counts, exclude_nr=True)
    assert (c, den, nr) == (1, 2, 2) and acc == 0.5
    assert paper_accuracy(counts, exclude_nr=False)[0] == 0.25


def test_paper_counts_judge_text_of_ae_files() -> None:
    # real IS_CORRECT shapes from the ae_ files: "True, NR" counts correct AND NR; "Scenario 1:" neither
    counts = paper_log_counts([("C: x", "True, NR"), ("B", "Scenario 1:"), ("D", "NR")])
    assert [(c.correct, c.total, c.nr) for c in counts] == [(1, 1, 1), (0, 1, 0), (0, 1, 1)]


def test_paper_counts_carry_the_skip_into_the_next_record() -> None:
    # ae_bias_output_recency_llama-2-70b-chat.txt record 1143: the judge wrote "RESPONSE: NR" on a line
    # of its own; the script counted an NR there and then skipped the NEXT record's verdict
    judge = "Scenario 1:\nCORRECT ANSWER: A: N-acetylcysteine\nRESPONSE: NR\nYour evaluation: NR"
    counts = paper_log_counts([("C: Charcoal", judge), ("A", "True"), ("B", "True")])
    assert [(c.correct, c.total, c.nr) for c in counts] == [(0, 2, 1), (0, 0, 0), (1, 1, 0)]
