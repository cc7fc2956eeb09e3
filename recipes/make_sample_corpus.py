"""Write the quickstart's sample corpus: synthetic clinical-style notes (no real patient data).

Every note is made up from the templates below with a seeded RNG, so the same arguments always give
byte-identical files. The notes carry the regularities a small masked-LM can learn (drug, dose,
route and frequency together; vitals in a fixed order; one problem's labs, imaging and plan
together) while numbers, wording and section order vary enough to leave real uncertainty.

    python recipes/make_sample_corpus.py                      # -> recipes/data/sample_notes*.jsonl
    python recipes/make_sample_corpus.py --num_notes 3000 --seed 7 --output_dir /tmp/notes
"""

import argparse
import json
import random
from pathlib import Path

DEFAULT_OUTPUT_DIR = Path(__file__).resolve().parent / "data"
TRAIN_FILE = "sample_notes.jsonl"
VALIDATION_FILE = "sample_notes_validation.jsonl"

# Chronic problem -> (ways a note writes it, home medications that go with it).
CHRONIC = {
    "hypertension": (["HTN", "hypertension"], ["lisinopril 10 mg po daily", "amlodipine 5 mg po daily",
                                               "hydrochlorothiazide 25 mg po daily"]),
    "hyperlipidemia": (["HLD", "hyperlipidemia"], ["atorvastatin 40 mg po qhs", "simvastatin 20 mg po qhs"]),
    "diabetes": (["DM2", "type 2 diabetes mellitus", "NIDDM"], ["metformin 500 mg po bid",
                                                               "glipizide 5 mg po daily"]),
    "cad": (["CAD s/p PCI", "coronary artery disease", "CAD"], ["aspirin 81 mg po daily",
                                                               "clopidogrel 75 mg po daily"]),
    "afib": (["atrial fibrillation", "AFib", "paroxysmal AF"], ["metoprolol tartrate 25 mg po bid",
                                                              "apixaban 5 mg po bid", "warfarin 5 mg po qhs"]),
    "chf": (["CHF (EF 35%)", "systolic heart failure", "HFrEF"], ["furosemide 40 mg po daily",
                                                                 "carvedilol 12.5 mg po bid"]),
    "copd": (["COPD", "COPD on 2L home O2"], ["tiotropium 18 mcg inh daily",
                                              "albuterol 2 puffs inh q4h prn wheezing"]),
    "gerd": (["GERD"], ["omeprazole 20 mg po daily", "pantoprazole 40 mg po daily"]),
    "hypothyroidism": (["hypothyroidism"], ["levothyroxine 50 mcg po daily", "levothyroxine 75 mcg po daily"]),
    "depression": (["depression", "anxiety/depression"], ["sertraline 50 mg po daily", "citalopram 20 mg po daily"]),
    "ckd": (["CKD stage 3", "chronic kidney disease"], ["calcium acetate 667 mg po tid with meals"]),
    "gout": (["gout"], ["allopurinol 100 mg po daily"]),
    "bph": (["BPH"], ["tamsulosin 0.4 mg po qhs"]),
    "oa": (["osteoarthritis", "OA of the knees"], ["acetaminophen 650 mg po q6h prn pain"]),
}

# Reason for admission -> symptoms, exam, labs, imaging, inpatient treatment and plan lines.
PROBLEMS = {
    "chf": dict(
        name=["acute on chronic systolic heart failure", "CHF exacerbation", "decompensated heart failure"],
        complaint=["shortness of breath", "SOB", "dyspnea on exertion", "leg swelling"],
        hpi=["worsening dyspnea on exertion and orthopnea over {d} days",
             "{d} pound weight gain and bilateral lower extremity edema",
             "increased SOB, now sleeping on {n} pillows"],
        exam=["JVP elevated to the angle of the jaw", "bibasilar crackles", "2+ pitting edema to the knees"],
        labs=["BNP {bnp}", "troponin < 0.01"],
        imaging=("cxr", "chf"),
        treat=["furosemide 40 mg iv bid", "furosemide 80 mg iv bid"],
        plan=["diurese with iv lasix, goal net negative 1-2 L per day", "strict I/Os and daily weights",
              "continue carvedilol and lisinopril", "low sodium diet, 2 g Na, fluid restriction 1.5 L",
              "repeat echo"],
        fever=False),
    "pna": dict(
        name=["community acquired pneumonia", "right lower lobe pneumonia", "CAP"],
        complaint=["fever and cough", "productive cough", "SOB and fever"],
        hpi=["cough productive of yellow sputum for {d} days", "fevers to 102 at home and chills",
             "pleuritic chest pain on the right"],
        exam=["crackles at the right base", "decreased breath sounds at the right base", "egophony on the right"],
        labs=["WBC {wbc_hi}", "lactate 1.8", "procalcitonin 2.4"],
        imaging=("cxr", "pna"),
        treat=["ceftriaxone 1 g iv daily", "azithromycin 500 mg po daily", "levofloxacin 750 mg po daily"],
        plan=["continue ceftriaxone and azithromycin, plan 5 day course", "f/u blood and sputum cultures",
              "incentive spirometry", "wean O2 as tolerated, goal SpO2 > 92%"],
        fever=True),
    "copd": dict(
        name=["COPD exacerbation", "acute exacerbation of COPD"],
        complaint=["SOB", "wheezing", "shortness of breath"],
        hpi=["increased wheezing and sputum production for {d} days", "using albuterol every 2 hours at home"],
        exam=["diffuse expiratory wheezes", "prolonged expiratory phase", "poor air movement bilaterally"],
        labs=["VBG 7.36/52", "WBC 9.8"],
        imaging=("cxr", "copd"),
        treat=["prednisone 40 mg po daily", "albuterol/ipratropium nebs q4h", "azithromycin 500 mg po daily"],
        plan=["prednisone 40 mg daily for 5 days", "duonebs q4h and albuterol prn",
              "wean O2 to home 2L, goal SpO2 88-92%", "smoking cessation counseling"],
        fever=False),
    "afib": dict(
        name=["atrial fibrillation with rapid ventricular response", "AFib with RVR"],
        complaint=["palpitations", "chest pain", "lightheadedness"],
        hpi=["palpitations that started {d} days ago", "HR in the 140s per EMS"],
        exam=["irregularly irregular rhythm", "no murmurs, rubs or gallops"],
        labs=["TSH 2.1", "troponin < 0.01", "K 3.6", "Mg 1.7"],
        imaging=("cxr", "normal"),
        treat=["diltiazem 10 mg iv x1", "metoprolol tartrate 25 mg po q6h", "heparin gtt"],
        plan=["rate control with metoprolol, goal HR < 110", "anticoagulation with apixaban 5 mg po bid, "
              "CHA2DS2-VASc 4", "replete K and Mg, goal K > 4 and Mg > 2", "tele monitoring", "TTE"],
        fever=False),
    "uti": dict(
        name=["urinary tract infection", "UTI", "pyelonephritis"],
        complaint=["dysuria", "fever and confusion", "flank pain"],
        hpi=["dysuria and frequency for {d} days", "new confusion per family", "right flank pain and fevers"],
        exam=["suprapubic tenderness", "right CVA tenderness", "dry mucous membranes"],
        labs=["UA with > 50 WBC, positive nitrite and leuk esterase", "WBC {wbc_hi}", "Cr 1.4 (baseline 1.0)"],
        imaging=("renal_us", "normal"),
        treat=["ceftriaxone 1 g iv daily", "iv fluids at 100 cc/hr"],
        plan=["ceftriaxone, narrow when urine culture returns", "f/u urine and blood cultures",
              "iv fluids, trend Cr", "transition to po ciprofloxacin 500 mg po bid to complete 7 days"],
        fever=True),
    "gib": dict(
        name=["upper GI bleed", "GI bleed", "melena with acute blood loss anemia"],
        complaint=["black stools", "melena", "coffee ground emesis"],
        hpi=["{d} days of black tarry stools", "lightheadedness on standing", "takes ibuprofen daily for knee pain"],
        exam=["pale conjunctivae", "melena on rectal exam", "epigastric tenderness"],
        labs=["Hct 24 (baseline 38)", "Hgb 7.8", "BUN 42", "INR 1.1"],
        imaging=("cxr", "normal"),
        treat=["pantoprazole 40 mg iv bid", "octreotide 50 mcg iv bolus", "ondansetron 4 mg iv q8h prn nausea"],
        plan=["pantoprazole 40 mg iv bid", "transfuse 2 units pRBC, goal Hgb > 7", "GI consulted, EGD in am",
              "hold aspirin and NSAIDs", "serial Hct q6h", "NPO after midnight"],
        fever=False),
    "stroke": dict(
        name=["acute ischemic stroke", "left MCA stroke", "CVA"],
        complaint=["right sided weakness", "slurred speech", "facial droop"],
        hpi=["acute onset right arm weakness and slurred speech, last known well {d} hours prior",
             "found by family with left facial droop"],
        exam=["right arm drift", "right facial droop", "expressive aphasia", "NIHSS 6"],
        labs=["glucose 128", "LDL 142", "HbA1c 7.1"],
        imaging=("ct_head", "stroke"),
        treat=["aspirin 325 mg po x1", "atorvastatin 80 mg po qhs"],
        plan=["aspirin 81 mg po daily and atorvastatin 80 mg po qhs", "MRI brain and CTA head and neck",
              "permissive HTN, SBP < 220", "neuro checks q4h", "PT/OT and speech and swallow eval"],
        fever=False),
    "chest_pain": dict(
        name=["chest pain, rule out ACS", "atypical chest pain", "NSTEMI"],
        complaint=["chest pain", "chest pressure", "CP"],
        hpi=["substernal chest pressure radiating to the left arm for {d} hours",
             "chest pain with exertion relieved by rest", "associated diaphoresis and nausea"],
        exam=["regular rate and rhythm", "no murmurs", "chest wall nontender"],
        labs=["troponin < 0.01 x3", "troponin 0.42", "LDL 131"],
        imaging=("cxr", "normal"),
        treat=["aspirin 325 mg po x1", "heparin gtt", "nitroglycerin 0.4 mg sl prn chest pain"],
        plan=["trend troponins and serial ECGs", "aspirin 81 mg daily and atorvastatin 80 mg qhs",
              "cardiology consulted for cardiac cath", "stress test if troponins negative"],
        fever=False),
    "sepsis": dict(
        name=["sepsis", "sepsis of unclear source", "septic shock"],
        complaint=["fever", "hypotension", "altered mental status"],
        hpi=["fevers and rigors for {d} days", "found to be hypotensive to the 80s at rehab"],
        exam=["warm extremities", "tachycardic", "lethargic but arousable"],
        labs=["lactate 4.2", "WBC {wbc_hi}", "Cr 1.9"],
        imaging=("cxr", "normal"),
        treat=["vancomycin 1 g iv q12h", "piperacillin-tazobactam 4.5 g iv q8h", "normal saline 30 cc/kg iv"],
        plan=["broad spectrum abx with vanc and zosyn", "f/u blood cultures x2", "trend lactate",
              "MAP goal > 65, norepinephrine if needed", "CT abd/pelvis to look for source"],
        fever=True),
    "dka": dict(
        name=["diabetic ketoacidosis", "DKA", "hyperglycemia"],
        complaint=["nausea and vomiting", "abdominal pain", "polyuria"],
        hpi=["polyuria and polydipsia for {d} days", "ran out of insulin last week"],
        exam=["dry mucous membranes", "Kussmaul respirations", "diffuse abdominal tenderness"],
        labs=["glucose 512", "anion gap 24", "bicarb 11", "beta-hydroxybutyrate 5.8"],
        imaging=("cxr", "normal"),
        treat=["insulin gtt", "normal saline 2 L bolus", "potassium chloride 20 mEq iv"],
        plan=["insulin gtt per DKA protocol, bridge to glargine 20 units sc qhs when gap closes",
              "q1h fingersticks and q4h lytes", "replete K, goal > 4", "diabetes educator"],
        fever=False),
    "aki": dict(
        name=["acute kidney injury", "AKI", "prerenal azotemia"],
        complaint=["decreased urine output", "weakness", "poor po intake"],
        hpi=["poor po intake and diarrhea for {d} days", "recently started on lisinopril"],
        exam=["dry mucous membranes", "flat neck veins"],
        labs=["Cr 2.6 (baseline 1.1)", "BUN 58", "K 5.4", "FeNa 0.4%"],
        imaging=("renal_us", "normal"),
        treat=["normal saline at 125 cc/hr", "lactated ringers 1 L iv bolus"],
        plan=["iv fluids, trend Cr", "hold nephrotoxins and ACE inhibitor", "renally dose meds",
              "strict I/Os", "renal ultrasound"],
        fever=False),
    "pe": dict(
        name=["pulmonary embolism", "acute PE", "submassive PE"],
        complaint=["shortness of breath", "pleuritic chest pain", "SOB"],
        hpi=["sudden onset SOB {d} days after a long flight", "left calf swelling"],
        exam=["tachycardic", "left calf tenderness", "clear lungs"],
        labs=["D-dimer 2.8", "troponin 0.05", "BNP 310"],
        imaging=("cta_chest", "pe"),
        treat=["heparin gtt", "enoxaparin 1 mg/kg sc q12h"],
        plan=["heparin gtt, transition to apixaban 10 mg po bid x7 days then 5 mg po bid",
              "TTE to assess RV", "LENIs"],
        fever=False),
    "cholecystitis": dict(
        name=["acute cholecystitis", "cholecystitis", "symptomatic cholelithiasis"],
        complaint=["abdominal pain", "RUQ pain", "nausea and vomiting"],
        hpi=["RUQ pain after fatty meals for {d} days", "nausea and one episode of nonbloody emesis"],
        exam=["RUQ tenderness", "positive Murphy's sign"],
        labs=["WBC {wbc_hi}", "T bili 1.8", "alk phos 160", "lipase 40"],
        imaging=("ruq_us", "chole"),
        treat=["piperacillin-tazobactam 4.5 g iv q8h", "morphine 2 mg iv q4h prn pain"],
        plan=["surgery consulted for lap chole", "NPO, iv fluids", "zosyn", "pain control"],
        fever=True),
}

# Imaging study -> header, and finding/impression pairs keyed by what it shows.
IMAGING = {
    "cxr": dict(
        header=["CHEST (PA & LAT)", "CHEST (PORTABLE AP)", "CHEST X-RAY, PA AND LATERAL"],
        technique=["PA and lateral views of the chest.", "Single portable AP view of the chest."],
        results={
            "normal": (["The lungs are clear. The cardiomediastinal silhouette is normal. "
                        "No pleural effusion or pneumothorax."],
                       ["No acute cardiopulmonary process.", "No acute intrathoracic process."]),
            "chf": (["The heart is enlarged. There is vascular congestion and mild interstitial edema. "
                     "Small bilateral pleural effusions."],
                    ["Mild pulmonary edema and small bilateral pleural effusions, consistent with CHF.",
                     "Cardiomegaly with pulmonary vascular congestion."]),
            "pna": (["There is a new opacity in the right lower lobe. No pneumothorax. "
                     "The heart size is normal."],
                    ["Right lower lobe opacity concerning for pneumonia.",
                     "Right lower lobe consolidation, consistent with pneumonia."]),
            "copd": (["The lungs are hyperinflated with flattening of the diaphragms. No focal consolidation."],
                     ["Hyperinflation consistent with COPD. No pneumonia.",
                      "Emphysema. No acute cardiopulmonary process."]),
        }),
    "ct_head": dict(
        header=["CT HEAD W/O CONTRAST", "CT HEAD WITHOUT CONTRAST"],
        technique=["Contiguous axial images of the brain were obtained without contrast."],
        results={
            "normal": (["There is no hemorrhage, edema, mass effect or acute infarction. "
                        "The ventricles and sulci are normal in size."],
                       ["No acute intracranial hemorrhage or mass effect.", "No acute intracranial process."]),
            "stroke": (["There is loss of gray-white differentiation in the left MCA territory. "
                        "No intracranial hemorrhage."],
                       ["Evolving left MCA territory infarct. No hemorrhage.",
                        "Findings consistent with acute left MCA infarct. No hemorrhage."]),
        }),
    "renal_us": dict(
        header=["RENAL U.S.", "RENAL ULTRASOUND"],
        technique=["Grayscale and color Doppler images of both kidneys."],
        results={
            "normal": (["The right kidney measures {kid} cm. The left kidney measures {kid} cm. "
                        "There is no hydronephrosis, stone or mass."],
                       ["No hydronephrosis.", "Normal renal ultrasound."]),
        }),
    "cta_chest": dict(
        header=["CTA CHEST W&W/O C&RECONS", "CT ANGIOGRAM OF THE CHEST"],
        technique=["Axial images of the chest after iv contrast, PE protocol."],
        results={
            "normal": (["There is no filling defect in the pulmonary arteries. The lungs are clear."],
                       ["No pulmonary embolism.", "No PE or acute aortic pathology."]),
            "pe": (["There are filling defects in the right and left lower lobe pulmonary arteries. "
                    "The RV/LV ratio is 1.1."],
                   ["Bilateral pulmonary emboli with evidence of right heart strain.",
                    "Acute bilateral pulmonary embolism."]),
        }),
    "ruq_us": dict(
        header=["LIVER OR GALLBLADDER US (SINGLE ORGAN)", "RUQ ULTRASOUND"],
        technique=["Grayscale images of the right upper quadrant."],
        results={
            "normal": (["The liver is normal in echotexture. The gallbladder is normal. "
                        "The common bile duct measures 4 mm."],
                       ["Normal right upper quadrant ultrasound.", "No cholelithiasis or cholecystitis."]),
            "chole": (["The gallbladder is distended with multiple stones, wall thickening to 5 mm and "
                       "pericholecystic fluid. Positive sonographic Murphy's sign."],
                      ["Findings consistent with acute cholecystitis.", "Cholelithiasis with acute cholecystitis."]),
        }),
}

INDICATIONS = {
    "cxr": ["eval for pneumonia", "SOB", "eval for infiltrate", "s/p line placement", "fever"],
    "ct_head": ["eval for bleed", "fall, on anticoagulation", "altered mental status", "r/o stroke"],
    "renal_us": ["AKI", "eval for hydronephrosis", "flank pain"],
    "cta_chest": ["r/o PE", "SOB and tachycardia", "pleuritic chest pain"],
    "ruq_us": ["RUQ pain", "elevated LFTs", "eval for cholecystitis"],
}


def _pick(rng, items, k_min=1, k_max=None):
    """Pick between k_min and k_max distinct items, keeping their listed order."""
    k_max = min(len(items), k_max or len(items))
    k = rng.randint(min(k_min, k_max), k_max)
    return [items[i] for i in sorted(rng.sample(range(len(items)), k))]


class _Patient:
    """One made-up patient: age, sex, chronic problems, home medications, the reason for admission."""

    def __init__(self, rng):
        self.age = rng.randint(28, 92)
        self.male = rng.random() < 0.5
        self.chronic = _pick(rng, list(CHRONIC), 1, 5)
        self.problem = rng.choice(list(PROBLEMS))
        self.home_meds = [rng.choice(CHRONIC[c][1]) for c in self.chronic]

    def he(self):
        return "he" if self.male else "she"

    def man(self, rng):
        return rng.choice(["man", "male", "M"] if self.male else ["woman", "female", "F"])

    def pmh_terms(self, rng):
        return [rng.choice(CHRONIC[c][0]) for c in self.chronic]


def _fill(rng, text):
    """Replace the numeric placeholders that problem templates use."""
    return text.format(d=rng.randint(2, 7), n=rng.randint(2, 4), bnp=rng.randint(800, 3200),
                       wbc_hi=round(rng.uniform(12.5, 21.0), 1), kid=round(rng.uniform(9.5, 11.8), 1))


def _date(rng):
    return f"[**{rng.randint(2100, 2190)}-{rng.randint(1, 12)}-{rng.randint(1, 28)}**]"


def _time(rng):
    return f"{rng.randint(0, 23):02d}:{rng.choice(['00', '15', '30', '45'])}"


def _vitals(rng, fever, style):
    """One line of vitals in a fixed order; the values depend a little on the problem."""
    temp = round(rng.uniform(100.8, 102.9) if fever else rng.uniform(97.2, 99.3), 1)
    hr = rng.randint(95, 125) if fever else rng.randint(58, 96)
    sbp, dbp = rng.randint(96, 162), rng.randint(52, 94)
    rr = rng.choice([14, 16, 18, 18, 20, 22, 24] if fever else [12, 14, 16, 16, 18])
    spo2 = rng.randint(89, 99)
    o2 = rng.choice(["RA", "RA", "2L NC", "3L NC", "4L NC"])
    if style == 0:
        return f"T {temp} HR {hr} BP {sbp}/{dbp} RR {rr} SpO2 {spo2}% on {o2}"
    if style == 1:
        return f"VS: T {temp}, BP {sbp}/{dbp}, HR {hr}, RR {rr}, O2 sat {spo2}% {o2}"
    return (f"temperature {temp} F, heart rate {hr}, blood pressure {sbp}/{dbp} mmHg, "
            f"respiratory rate {rr}, oxygen saturation {spo2}% on {o2}")


def _chem(rng):
    """A basic metabolic panel, always in the same order."""
    return (f"Na {rng.randint(131, 145)}, K {round(rng.uniform(3.3, 5.1), 1)}, Cl {rng.randint(96, 108)}, "
            f"HCO3 {rng.randint(19, 29)}, BUN {rng.randint(8, 36)}, Cr {round(rng.uniform(0.6, 1.6), 1)}, "
            f"Glu {rng.randint(78, 240)}")


def _cbc(rng):
    return (f"WBC {round(rng.uniform(4.2, 11.0), 1)}, Hgb {round(rng.uniform(9.0, 15.5), 1)}, "
            f"Hct {round(rng.uniform(28.0, 46.0), 1)}, Plt {rng.randint(140, 420)}")


def _exam(rng, prob):
    """A one-line exam: heart, lungs, abdomen, then the problem's pertinent findings."""
    heart = rng.choice(["RRR, no m/r/g", "regular rate and rhythm, no murmurs"])
    lungs = rng.choice(["CTAB", "clear to auscultation bilaterally"])
    abd = rng.choice(["soft, NT/ND, +BS", "soft, nontender, nondistended"])
    return f"Exam: CV {heart}; Lungs {lungs}; Abd {abd}. Pertinent: {', '.join(_pick(rng, prob['exam'], 1, 2))}"


_DOTTED = {"po": "p.o.", "bid": "b.i.d.", "tid": "t.i.d.", "qhs": "q.h.s.", "prn": "p.r.n."}


def _meds_block(rng, meds):
    """A medication list as a numbered list, a dashed list or one line; some writers dot the Latin."""
    if rng.random() < 0.25:
        meds = [" ".join(_DOTTED.get(word, word) for word in m.split(" ")) for m in meds]
    style = rng.randint(0, 2)
    if style == 0:
        return "\n".join(f"{i}. {m}" for i, m in enumerate(meds, 1))
    if style == 1:
        return "\n".join(f"- {m}" for m in meds)
    return ", ".join(meds) + "."


def _imaging_text(rng, study, result):
    spec = IMAGING[study]
    findings, impressions = spec["results"][result]
    return _fill(rng, rng.choice(findings)), rng.choice(impressions)


def discharge_summary(rng):
    """A discharge summary: HPI, PMH, home meds, results, hospital course, discharge meds and plan."""
    p = _Patient(rng)
    prob = PROBLEMS[p.problem]
    dx = rng.choice(prob["name"])
    year, month, day = rng.randint(2100, 2190), rng.randint(1, 12), rng.randint(1, 20)
    hpi_bits = [_fill(rng, h) for h in _pick(rng, prob["hpi"], 1, 2)]
    study, result = prob["imaging"]
    _, impression = _imaging_text(rng, study, result)
    course = [f"# {dx}: treated with {', '.join(_pick(rng, prob['treat'], 1, 2))}. "
              + " ".join(x[0].upper() + x[1:] + "." for x in _pick(rng, prob["plan"], 1, 2))]
    for c, med in list(zip(p.chronic, p.home_meds))[:2]:
        course.append(f"# {CHRONIC[c][0][0]}: {rng.choice(['continued', 'continued home', 'held, then restarted'])} {med}.")
    sections = [
        f"Admission Date: [**{year}-{month}-{day}**]  Discharge Date: [**{year}-{month}-{day + rng.randint(2, 8)}**]",
        f"Service: {rng.choice(['MEDICINE', 'MEDICINE', 'CARDIOLOGY', 'MICU', 'NEUROLOGY', 'SURGERY'])}",
        f"Allergies: {rng.choice(['NKDA', 'NKDA', 'Penicillins', 'Sulfa (Sulfonamide Antibiotics)', 'codeine'])}",
        f"Chief Complaint: {rng.choice(prob['complaint'])}",
        f"{rng.choice(['HISTORY OF PRESENT ILLNESS', 'HPI'])}: {p.age} yo {p.man(rng)} with "
        f"{', '.join(p.pmh_terms(rng))} who presents to the [**Hospital1 {rng.randint(1, 99)}**] ED with "
        f"{'; '.join(hpi_bits)}. In the ED, {_vitals(rng, prob['fever'], rng.randint(0, 2))}. "
        f"{p.he().capitalize()} was given {rng.choice(prob['treat'])}.",
        f"{rng.choice(['PAST MEDICAL HISTORY', 'PMH'])}: {', '.join(p.pmh_terms(rng))}",
        f"{rng.choice(['MEDICATIONS ON ADMISSION', 'Home Medications'])}:\n{_meds_block(rng, p.home_meds)}",
        f"{rng.choice(['PERTINENT RESULTS', 'Labs'])}: {_chem(rng)}. "
        + ", ".join(_fill(rng, x) for x in _pick(rng, prob["labs"], 1, 3)),
        f"{rng.choice(IMAGING[study]['header'])}: {impression}",
        f"{rng.choice(['BRIEF HOSPITAL COURSE', 'HOSPITAL COURSE'])}:\n" + "\n".join(course),
        f"{rng.choice(['DISCHARGE MEDICATIONS', 'Discharge Medications'])}:\n"
        f"{_meds_block(rng, p.home_meds + _pick(rng, prob['treat'], 0, 1))}",
        f"Discharge Disposition: {rng.choice(['Home', 'Home With Service', 'Extended Care'])}",
        f"Discharge Diagnosis: {dx}",
        f"Followup Instructions: f/u with PCP Dr. [**Last Name (STitle) {rng.randint(100, 9999)}**] "
        f"in {rng.choice(['1 week', '1-2 weeks', '2 weeks'])}.",
    ]
    return "\n".join(sections)


def progress_note(rng):
    """A physician progress note in SOAP form with a problem-based assessment and plan."""
    p = _Patient(rng)
    prob = PROBLEMS[p.problem]
    dx = rng.choice(prob["name"])
    day = rng.randint(1, 6)
    subj = rng.choice([f"No acute events overnight. Pt reports {rng.choice(['improved', 'persistent', 'mild'])} "
                       f"{rng.choice(prob['complaint'])}.",
                       f"Pt feeling better this am. {rng.choice(['Tolerating po.', 'Ambulating with PT.', 'Slept well.'])}",
                       f"Overnight: {rng.choice(['febrile to 101.2, cultures sent', 'uneventful', 'required 1 dose of prn ativan'])}."])
    meds = p.home_meds[:2] + _pick(rng, prob["treat"], 1, 2)
    plan = [f"# {dx}: " + "; ".join(_pick(rng, prob["plan"], 1, 3))]
    for c in p.chronic[:2]:
        plan.append(f"# {rng.choice(CHRONIC[c][0])}: {rng.choice(['stable, continue home meds', 'continue', 'cont home regimen'])}")
    plan += _pick(rng, [f"# FEN: {rng.choice(['regular diet', 'cardiac diet', 'NPO', 'diabetic diet'])}, replete lytes prn",
                        f"# PPx: {rng.choice(['heparin 5000 units sc tid', 'heparin sc', 'pneumoboots'])}, bowel regimen",
                        f"# Code: {rng.choice(['Full code', 'DNR/DNI', 'Full (confirmed)'])}",
                        f"# Dispo: {rng.choice(['pending clinical improvement', 'home in 1-2 days', 'likely rehab, PT eval'])}"],
                  1, 3)
    sections = [
        f"{rng.choice(['MICU', 'Medicine', 'Hospitalist', 'Cardiology'])} Progress Note, HD #{day}",
        f"S: {subj}",
        f"O: {_vitals(rng, prob['fever'] and day < 3, rng.randint(0, 1))}\n"
        f"I/O: {rng.randint(800, 2400)} / {rng.randint(600, 3500)}\n{_exam(rng, prob)}",
        f"Labs: {rng.choice([_chem, _cbc])(rng)}",
        f"Meds: {_meds_block(rng, meds)}",
    ]
    study, result = prob["imaging"]
    if study == "cxr" and rng.random() < 0.5:
        sections.append(f"{rng.choice(['CXR', 'CXR today', 'Portable CXR'])}: {_imaging_text(rng, study, result)[1]}")
    sections += [
        f"A/P: {p.age} yo {p.man(rng)} with {', '.join(p.pmh_terms(rng)[:3])} admitted with {dx}, "
        f"{rng.choice(['improving', 'clinically improving', 'stable', 'slowly improving'])}.\n" + "\n".join(plan),
    ]
    return "\n".join(sections)


def nursing_note(rng):
    """A nursing note written by system (Neuro, CV, Resp, GI/GU, Skin) with a short plan."""
    p = _Patient(rng)
    prob = PROBLEMS[p.problem]
    sbp = rng.randint(9, 15) * 10
    hr = rng.randint(6, 10) * 10
    lines = [
        f"{rng.choice(['Nursing Progress Note', 'NPN', 'Nursing Note'])} {rng.choice(['0700-1900', '1900-0700', '7a-7p', '7p-7a'])}",
        f"Pt is a {p.age} yo {p.man(rng)} admitted with {rng.choice(prob['name'])}.",
        f"Neuro: {rng.choice(['A&Ox3, MAE, follows commands.', 'alert and oriented x3, pleasant and cooperative.', 'A&Ox1-2, intermittently confused, reoriented easily.'])}"
        f" {rng.choice(['Denies pain.', 'c/o pain 4/10, given acetaminophen 650 mg po with relief.', 'Pain controlled.'])}",
        f"CV: {rng.choice(['NSR', 'SR', 'AFib'])} {hr}s-{hr + 10}s, SBP {sbp}s-{sbp + 20}s. "
        f"{rng.choice(['Pulses palpable.', 'No ectopy.', '+1 pedal edema.'])}",
        f"Resp: LS {rng.choice(['clear bilaterally', 'clear, diminished at bases', 'with crackles at bases', 'with scattered wheezes'])}, "
        f"on {rng.choice(['RA', '2L NC', '3L NC', '4L NC'])}, sats {rng.randint(92, 96)}-{rng.randint(97, 100)}%. "
        f"{rng.choice(['Using incentive spirometer.', 'Non productive cough.', 'No SOB.', 'Denies SOB.'])}",
        f"GI/GU: abd soft, {rng.choice(['nontender', 'NT/ND'])}, +BS. {rng.choice(['Tolerating diet.', 'NPO after midnight.', 'Poor po intake.'])} "
        f"{rng.choice(['Voiding qs.', 'Foley draining clear yellow urine.', 'Foley draining amber urine, UO 30-50 cc/hr.'])}",
        f"Skin: {rng.choice(['intact.', 'stage 1 on coccyx, barrier cream applied.', 'PIV intact, site clean.'])}",
    ]
    lines.append(f"Meds given: {', '.join(_pick(rng, prob['treat'], 1, 2))}.")
    if rng.random() < 0.5:
        lines.append(f"Social: {rng.choice(['Wife in to visit, updated on plan of care.', 'Daughter called, updated.', 'No visitors this shift.'])}")
    lines.append(f"Plan: {rng.choice(['Continue to monitor.', 'Continue current plan of care.', 'Monitor VS, I/Os.'])} "
                 f"{rng.choice(['Fall precautions.', 'Encourage po fluids.', 'f/u am labs.', 'OOB to chair with assist.'])}")
    return "\n".join(lines)


def radiology_report(rng):
    """A radiology report: study header, reason, history, comparison, technique, findings, impression."""
    p = _Patient(rng)
    prob = PROBLEMS[p.problem]
    study, result = prob["imaging"] if rng.random() < 0.6 else (
        rng.choice(list(IMAGING)), "normal")
    spec = IMAGING[study]
    findings, impression = _imaging_text(rng, study, result)
    lines = [
        f"{_date(rng)} {_time(rng)}",
        f"{rng.choice(spec['header'])}  Clip # [**Clip Number (Radiology) {rng.randint(1000, 99999)}**]",
        f"Reason: {rng.choice(INDICATIONS[study])}",
        f"{rng.choice(['HISTORY', 'CLINICAL INDICATION'])}: {p.age}-year-old {'man' if p.male else 'woman'} with "
        f"{rng.choice(p.pmh_terms(rng))} and {rng.choice(prob['complaint'])}.",
        f"COMPARISON: {rng.choice(['None.', f'Prior study from {_date(rng)}.', f'{_date(rng)}.'])}",
        f"TECHNIQUE: {rng.choice(spec['technique'])}",
        f"FINDINGS: {findings}",
        f"IMPRESSION: {impression}",
    ]
    if rng.random() < 0.3:
        lines.append(f"Dr. [**First Name (STitle) {rng.randint(100, 9999)}**] was notified by phone at {_time(rng)}.")
    return "\n".join(lines)


NOTE_TYPES = [(discharge_summary, 0.14), (progress_note, 0.24), (nursing_note, 0.34), (radiology_report, 0.28)]


def make_notes(num_notes, seed):
    """The notes as a list of strings; the same (num_notes, seed) always gives the same list."""
    rng = random.Random(seed)
    makers, weights = zip(*NOTE_TYPES)
    return [rng.choices(makers, weights)[0](rng) for _ in range(num_notes)]


def write_corpus(output_dir, num_notes=2200, seed=42, validation_every=10):
    """Write every validation_every-th note to the validation file and the rest to the train file."""
    if num_notes < validation_every:
        raise ValueError(f"num_notes={num_notes} is too small: use at least validation_every={validation_every}.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    notes = make_notes(num_notes, seed)
    splits = {TRAIN_FILE: [n for i, n in enumerate(notes) if i % validation_every != validation_every - 1],
              VALIDATION_FILE: [n for i, n in enumerate(notes) if i % validation_every == validation_every - 1]}
    paths = []
    for name, texts in splits.items():
        path = output_dir / name
        with open(path, "w", encoding="utf-8", newline="\n") as f:
            f.writelines(json.dumps({"text": t}, ensure_ascii=True) + "\n" for t in texts)
        paths.append(path)
    return paths


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output_dir", default=str(DEFAULT_OUTPUT_DIR))
    parser.add_argument("--num_notes", type=int, default=2200)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args(argv)
    for path in write_corpus(args.output_dir, args.num_notes, args.seed):
        lines = path.read_text(encoding="utf-8").count("\n")
        print(f"wrote {path} ({lines} notes, {path.stat().st_size / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
