"""The entity catalogue a privacy profile may name, without importing presidio.

Profiles are validated at start-up (and by ``check-config``) before any analyzer is built,
so the names live here as data: an unknown entity in a profile is refused with the file
and the key (issue 4). ``tests/privacy/test_analyzer.py`` checks that every presidio class
named below exists and detects the entity it is filed under, so a presidio upgrade that
renames one fails a test instead of silently dropping detection.

Three kinds:

- ``PRESIDIO_PATTERN_ENTITIES``: presidio's own regex/checksum recognizers (and its
  ``phonenumbers``-based phone recognizer). No model, no network. Country-specific ones
  are instantiated for English text whatever language presidio files them under: model
  traffic is mostly English prompts carrying foreign identifiers.
- ``CUSTOM_ENTITIES``: ours (``sidecar/privacy/recognizers.py``), for the secrets that
  model traffic leaks: API keys, AWS access key ids, JWTs, bearer tokens.
- ``NER_ENTITIES``: need a spaCy model (optional: see ``sidecar/privacy/analyzer.py``);
  without one they are reported inactive, not silently treated as detected.
"""

from __future__ import annotations

PRESIDIO_PATTERN_ENTITIES: dict[str, str] = {
    "ABA_ROUTING_NUMBER": "AbaRoutingRecognizer",
    "AU_ABN": "AuAbnRecognizer",
    "AU_ACN": "AuAcnRecognizer",
    "AU_MEDICARE": "AuMedicareRecognizer",
    "AU_TFN": "AuTfnRecognizer",
    "CA_POSTAL_CODE": "CaPostalCodeRecognizer",
    "CA_SIN": "CaSinRecognizer",
    "CREDIT_CARD": "CreditCardRecognizer",
    "CRYPTO": "CryptoRecognizer",
    "DATE_TIME": "DateRecognizer",
    "DE_BSNR": "DeBsnrRecognizer",
    "DE_FUEHRERSCHEIN": "DeFuehrerscheinRecognizer",
    "DE_HANDELSREGISTER": "DeHandelsregisterRecognizer",
    "DE_HEALTH_INSURANCE": "DeHealthInsuranceRecognizer",
    "DE_ID_CARD": "DeIdCardRecognizer",
    "DE_KFZ": "DeKfzRecognizer",
    "DE_LANR": "DeLanrRecognizer",
    "DE_PASSPORT": "DePassportRecognizer",
    "DE_PLZ": "DePlzRecognizer",
    "DE_SOCIAL_SECURITY": "DeSocialSecurityRecognizer",
    "DE_TAX_ID": "DeTaxIdRecognizer",
    "DE_TAX_NUMBER": "DeTaxNumberRecognizer",
    "DE_VAT_ID": "DeVatIdRecognizer",
    "EMAIL_ADDRESS": "EmailRecognizer",
    "ES_NIE": "EsNieRecognizer",
    "ES_NIF": "EsNifRecognizer",
    "ES_PASSPORT": "EsPassportRecognizer",
    "FI_PERSONAL_IDENTITY_CODE": "FiPersonalIdentityCodeRecognizer",
    "IBAN_CODE": "IbanRecognizer",
    "IN_AADHAAR": "InAadhaarRecognizer",
    "IN_GSTIN": "InGstinRecognizer",
    "IN_PAN": "InPanRecognizer",
    "IN_PASSPORT": "InPassportRecognizer",
    "IN_VEHICLE_REGISTRATION": "InVehicleRegistrationRecognizer",
    "IN_VOTER": "InVoterRecognizer",
    "IP_ADDRESS": "IpRecognizer",
    "IT_DRIVER_LICENSE": "ItDriverLicenseRecognizer",
    "IT_FISCAL_CODE": "ItFiscalCodeRecognizer",
    "IT_IDENTITY_CARD": "ItIdentityCardRecognizer",
    "IT_PASSPORT": "ItPassportRecognizer",
    "IT_VAT_CODE": "ItVatCodeRecognizer",
    "KR_BRN": "KrBrnRecognizer",
    "KR_DRIVER_LICENSE": "KrDriverLicenseRecognizer",
    "KR_FRN": "KrFrnRecognizer",
    "KR_PASSPORT": "KrPassportRecognizer",
    "KR_RRN": "KrRrnRecognizer",
    "MAC_ADDRESS": "MacAddressRecognizer",
    "MEDICAL_LICENSE": "MedicalLicenseRecognizer",
    "NG_NIN": "NgNinRecognizer",
    "NG_VEHICLE_REGISTRATION": "NgVehicleRegistrationRecognizer",
    "PHONE_NUMBER": "PhoneRecognizer",
    "PH_PASSPORT": "PhPassportRecognizer",
    "PH_TIN": "PhTinRecognizer",
    "PH_UMID": "PhUmidRecognizer",
    "PL_PESEL": "PlPeselRecognizer",
    "SE_ORGANISATIONSNUMMER": "SeOrganisationsnummerRecognizer",
    "SE_PERSONNUMMER": "SePersonnummerRecognizer",
    "SG_NRIC_FIN": "SgFinRecognizer",
    "SG_UEN": "SgUenRecognizer",
    "TH_TNIN": "ThTninRecognizer",
    "TR_LICENSE_PLATE": "TrLicensePlateRecognizer",
    "TR_NATIONAL_ID": "TrNationalIdRecognizer",
    "UK_DRIVING_LICENCE": "UkDrivingLicenceRecognizer",
    "UK_NHS": "NhsRecognizer",
    "UK_NINO": "UkNinoRecognizer",
    "UK_PASSPORT": "UkPassportRecognizer",
    "UK_POSTCODE": "UkPostcodeRecognizer",
    "UK_VEHICLE_REGISTRATION": "UkVehicleRegistrationRecognizer",
    "URL": "UrlRecognizer",
    "US_BANK_NUMBER": "UsBankRecognizer",
    "US_CLAIM_NUMBER": "UsClaimNumberRecognizer",
    "US_DRIVER_LICENSE": "UsLicenseRecognizer",
    "US_HEALTH_INSURANCE_MEMBER_ID": "UsHealthInsuranceMemberIdRecognizer",
    "US_ITIN": "UsItinRecognizer",
    "US_MBI": "UsMbiRecognizer",
    "US_NPI": "UsNpiRecognizer",
    "US_PASSPORT": "UsPassportRecognizer",
    "US_PRESCRIPTION_NUMBER": "UsPrescriptionNumberRecognizer",
    "US_PRIOR_AUTHORIZATION_NUMBER": "UsPriorAuthorizationNumberRecognizer",
    "US_PROVIDER_TAX_ID": "UsProviderTaxIdRecognizer",
    "US_REFERRAL_NUMBER": "UsReferralNumberRecognizer",
    "US_SSN": "UsSsnRecognizer",
    "UUID": "UuidRecognizer",
    "ZA_COMPANY_REGISTRATION": "ZaCompanyRegistrationRecognizer",
    "ZA_DRIVER_LICENSE": "ZaDriverLicenseRecognizer",
    "ZA_ID_NUMBER": "ZaIdNumberRecognizer",
    "ZA_INCOME_TAX_NUMBER": "ZaIncomeTaxNumberRecognizer",
    "ZA_LICENSE_PLATE": "ZaLicensePlateRecognizer",
    "ZA_PASSPORT": "ZaPassportRecognizer",
    "ZA_TRAFFIC_REGISTER_NUMBER": "ZaTrafficRegisterNumberRecognizer",
    "ZA_VAT_NUMBER": "ZaVatNumberRecognizer",
}

CUSTOM_ENTITIES: frozenset[str] = frozenset(
    {"API_KEY", "AWS_ACCESS_KEY_ID", "JWT", "BEARER_TOKEN"}
)

NER_ENTITIES: frozenset[str] = frozenset(
    {"PERSON", "LOCATION", "ORGANIZATION", "NRP", "DATE_TIME"}
)

# DATE_TIME is both a pattern entity and an NER label: pattern detection is used always,
# NER adds to it when a model is present.
PATTERN_ENTITIES: frozenset[str] = frozenset(PRESIDIO_PATTERN_ENTITIES) | CUSTOM_ENTITIES

KNOWN_ENTITIES: frozenset[str] = PATTERN_ENTITIES | NER_ENTITIES


def is_pattern_entity(entity: str) -> bool:
    """True when detection needs no NLP model (and so always works offline)."""
    return entity in PATTERN_ENTITIES
